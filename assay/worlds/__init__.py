"""Worlds: seeded generators of examples *and* their ground truth (see ``base.py``)."""
