"""Robustness: average-case, adversarial, curvature, off-manifold, SAE fragility.

Modules (import them directly; nothing is loaded here): ``average_case`` (p_σ(x) estimators),
``mvn`` (batched multivariate normal CDF), ``adversarial`` (FGSM, PGD, robust accuracy, adversarial
training), ``curvature`` (Hessian power iteration, normalised curvature), ``lcnn_layers`` / ``lcnn``
(low-curvature layers and recipe), ``regularisers`` (gradient-norm, score matching),
``off_manifold`` (on/off-manifold robustness, gradient alignment), ``sae_fragility`` (attacks on
dictionary latents: continuous, token replacement, suffix append). The experiments (worlds ×
estimators/PGD/curvature × seeds; world models × SAE attacks × seeds) are the bench families
``assay.bench.robustness`` and ``assay.bench.sae_fragility``. See docs/robustness.md.
"""
