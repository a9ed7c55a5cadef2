"""Pruning: masks, magnitude pruning, importance scores, schedules, structured removal.

Modules (import them directly; nothing is loaded here): ``masks`` (dense shadow weights × mask,
sparsity accounting, ``materialize``), ``magnitude`` (layer-wise and global magnitude pruning — Zhu &
Gupta 2017, "To prune, or not to prune"), ``importance`` (the gradient-flow measures of Lubana & Dick
2021, "A Gradient Flow Framework for Analyzing Network Pruning"; SNIP, LAMP, N:M), ``schedules``
(one-shot, linear, cubic and cyclical schedules — Srinivas, Kuzmin, Nagel, van Baalen, Skliar,
Blankevoort 2022, "Cyclical Pruning for Sparse Neural Networks" — and a resumable prune-and-fine-tune
loop), ``structured`` (physical removal of neurons and channels along dependency groups — Fang, Ma,
Song, Mi, Wang 2023, "DepGraph: Towards Any Structural Pruning"). See docs/pruning.md.
"""
