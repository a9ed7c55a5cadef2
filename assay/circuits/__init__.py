"""Circuits with ground truth: compiled transformers (:mod:`assay.circuits.compile`) and attribution
graphs over feature bases (:mod:`assay.circuits.graph`).

Compiled models follow tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability") at its craft level; graphs follow Ameisen et al. 2025, "Circuit Tracing: Revealing
Computational Graphs in Language Models".
"""
