"""Learning dynamics: checkpoint series, transitions, concept-space trajectories, mode connectivity.

Modules (import them directly; nothing is loaded here): ``connectivity`` (paths between two models
and their loss barriers), ``alignment`` (permutation alignment by weight or activation matching),
``cbft`` (connectivity-based fine-tuning away from a cue), ``similarity`` (mechanistic similarity as
shared invariances), ``transitions`` (onset and sharpness of
an abrupt change), ``checkpoints`` (training writes a log-spaced checkpoint series into one artifact;
any metric over a series is a curve), ``concept_space`` (trajectories in concept space and hidden
capabilities), ``editing`` (knowledge editing: ROME's rank-one edit and a fine-tuning edit of one MLP). The
experiment behind ``assay dynamics`` is ``assay.bench.dynamics``; the forgetting study
(accuracy on planted contamination over training, per insertion time) is ``assay.bench.forgetting``. See
docs/dynamics.md.
"""
