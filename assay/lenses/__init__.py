"""Lenses: the encoder–decoder view of probes, steering vectors, SAEs and logit/tuned lenses."""
