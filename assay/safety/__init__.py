"""Certified safety filters: erase-and-check and its empirical variants.

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705). Modules (import them directly; nothing is loaded here): ``erase``
(the erased subsequences per mode, in token space, and their counts), ``filter`` (the filter
protocol), ``certificate`` (erase-and-check and its ``Certificate``), ``empirical`` (RandEC,
GreedyEC, GradEC), the filters ``classifier``, ``prompted`` and ``probe_filter`` (one pass for all
suffix-mode prefixes), and ``prompts`` (the bundled template prompt set). See docs/safety.md.
"""
