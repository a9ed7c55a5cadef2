"""Activation store: sharded, memory-mapped, resumable activations on disk."""
