"""Training-data attribution: per-example gradients to scores."""
