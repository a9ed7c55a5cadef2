"""Pruning and compression: masks, magnitude pruning, importance scores, schedules, structured removal,
data-free neuron surgery, trainable gates and Jacobian-matching distillation.

Modules (import them directly; nothing is loaded here): ``masks`` (dense shadow weights × mask,
sparsity accounting, ``materialize``), ``magnitude`` (layer-wise and global magnitude pruning — Zhu &
Gupta 2017, "To prune, or not to prune"), ``importance`` (the gradient-flow measures of Lubana & Dick
2021, "A Gradient Flow Framework for Analyzing Network Pruning"; SNIP, LAMP, N:M), ``schedules``
(one-shot, linear, cubic and cyclical schedules — Srinivas, Kuzmin, Nagel, van Baalen, Skliar,
Blankevoort 2022, "Cyclical Pruning for Sparse Neural Networks" — and a resumable prune-and-fine-tune
loop), ``structured`` (physical removal of neurons and channels along dependency groups — Fang, Ma,
Song, Mi, Wang 2023, "DepGraph: Towards Any Structural Pruning"), ``surgery`` (data-free merging of
near-duplicate neurons — Srinivas & Babu 2015, "Data-free parameter pruning for Deep Neural Networks"),
``gates`` (hard-concrete L0 gates — Louizos, Welling & Kingma 2018; the idea after Srinivas & Babu 2016
and Srinivas, Subramanya & Babu 2017), ``jacobian`` (Jacobian-matching distillation — Srinivas &
Fleuret 2018, "Knowledge Transfer with Jacobian Matching"). See docs/pruning.md and
docs/pruning_surgery.md.
"""
