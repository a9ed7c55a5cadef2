"""Concepts: sparse nonnegative decompositions of embeddings onto named concept dictionaries (SpLiCE,
Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024)."""
