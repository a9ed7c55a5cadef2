"""Robustness: average-case, adversarial, curvature, off-manifold, SAE fragility."""
