"""Dictionaries: sparse autoencoders and related dictionary learners."""
