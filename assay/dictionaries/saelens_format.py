"""Read and write SAELens' on-disk SAE format (a folder with ``cfg.json`` and
``sae_weights.safetensors``), so SAEs move between assay and SAELens (decoderesearch/SAELens ≥ 6).

Weights use the same names and layouts in both: W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_in], b_dec [d_in] (+ ``threshold`` [d_sae] for JumpReLU). Architectures map as

    assay relu      ↔ SAELens "standard"  (assay does not subtract b_dec: apply_b_dec_to_input=False)
    assay topk      ↔ SAELens "topk"      (apply_b_dec_to_input=True)
    assay jumprelu  ↔ SAELens "jumprelu"  (apply_b_dec_to_input=False)
    assay batchtopk, matryoshka → SAELens "jumprelu" with the global inference threshold θ on every latent
                                  (as SAELens saves its own BatchTopK SAEs for inference)
    assay archetypal → SAELens "topk" with the fused dictionary D = (W C + Λ)·exp(m) as W_dec (one way:
                       it reads back as a plain TopK SAE)
    assay jumprelu_transcoder ↔ SAELens "jumprelu_transcoder" / "jumprelu_skip_transcoder" (+ d_out,
                       W_skip [d_out, d_in]; ReLU then the mask pre > θ, as assay for θ > 0)
    assay temporal (dense_context, or k = d_sae) ↔ SAELens "temporal" (Lubana et al. 2025, arXiv 2511.01836):
                       tied W_dec, b_dec, the queries/keys as ``attn_layers.0.q_target`` / ``k_ctx``, and
                       identity value and output projections ``v_ctx`` / ``c_proj`` (n × n, zero bias)

SAELens' TemporalSAE is the reference model: its context codes are the dense ReLU codes and its
attention has learned n × n value and output projections, followed by a ReLU. assay's TemporalSAE keeps
the context codes TopK_k-sparse (unless ``dense_context``) and uses each head's own past codes as values,
i.e. the identity projections (after which the ReLU does nothing: codes and weights are ≥ 0). So the two
compute the same thing only when the context code is dense (``dense_context=True``, any k: the novel
code's TopK_k is SAELens' ``kval_topk``; or k = d_sae), when assay attends to the whole window (``context``
None; SAELens has no context limit and no mask) and when d_sae / d_attn is a whole number (SAELens' query
width is d_sae / bottleneck_factor); otherwise ``save_saelens`` raises, naming each difference. A λ other
than SAELens' fixed 1/(4 d_in) is exported untied (W_enc = (λ / λ_SAELens) W_decᵀ), the input scale as
``constant_scalar_rescale``. Reading takes the same subset back (identity v_ctx / c_proj, W_enc tied or a
multiple of W_decᵀ; a TopK novel code with kval_topk < d_sae as ``dense_context=True``) and refuses the rest, e.g. every temporal SAE SAELens trains or
downloads (learned projections), naming each term. benchmarks/temporal_saelens_gap.py measures what the
TopK context code alone changes on a trained model (docs/temporal_sae.md).

SAELens 6.54 has no format for assay's TopK transcoder (its transcoders are ReLU "transcoder" /
"skip_transcoder" and the JumpReLU pair), MP (its "matching_pursuit" is a training-time SAE with a
different residual rule), SpaDE, or crosscoders: saving those raises, naming the alternatives. Its ReLU
"transcoder" / "skip_transcoder" have no assay counterpart and are refused when read.

Reading an SAELens SAE with ``apply_b_dec_to_input=True`` into an assay architecture that does not
subtract b_dec folds it into the encoder bias: (x − b_dec) W_enc + b_enc = x W_enc + (b_enc − b_dec W_enc).
Input normalisation other than ``"none"`` is refused (assay folds its input scale into the weights), except
``constant_scalar_rescale`` for the temporal SAE (kept as its input-scale buffer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from assay.artifact import staged_folder
from assay.dictionaries.base import SAE

__all__ = ["save_saelens", "load_saelens", "CFG_FILE", "WEIGHTS_FILE"]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


def save_saelens(sae: SAE, path: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` in SAELens' format (inference form) to folder ``path`` (replaced atomically: written beside
    it, then renamed) and return the folder."""
    path = Path(path)
    arch = sae.architecture
    if arch == "temporal":
        cfg, weights = _temporal(sae, metadata)
        return _write(path, cfg, weights)
    sd = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    if arch == "archetypal":
        sd["W_dec"] = sae.W_dec
    weights = {k: sd[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")} if "W_enc" in sd and "W_dec" in sd else None
    if weights is None:
        raise _no_format(arch)
    cfg: dict[str, Any] = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": str(sd["W_enc"].dtype).removeprefix("torch."),
                           "device": "cpu", "normalize_activations": "none", "reshape_activations": "none",
                           "metadata": dict(metadata or {})}
    if arch == "relu":
        cfg |= {"architecture": "standard", "apply_b_dec_to_input": False}
    elif arch == "jumprelu_transcoder":
        skip = bool(sae.cfg.skip)  # type: ignore[attr-defined]
        cfg |= {"architecture": "jumprelu_skip_transcoder" if skip else "jumprelu_transcoder",
                "apply_b_dec_to_input": False, "d_out": sae.d_out}
        weights["threshold"] = sae.threshold.detach().contiguous().cpu()  # type: ignore[operator]
        if skip:
            weights["W_skip"] = sd["W_skip"]
    elif arch == "topk_transcoder":
        raise ValueError("SAELens 6.54 has no TopK transcoder (its transcoders are ReLU 'transcoder'/'skip_transcoder' "
                         "and 'jumprelu_transcoder'/'jumprelu_skip_transcoder'); train a jumprelu_transcoder to "
                         "move it to SAELens, or keep it as an assay artifact (save_sae)")
    elif arch == "archetypal":
        weights["W_dec"] = sae.W_dec.detach().contiguous().cpu()  # the fused dictionary
        cfg |= {"architecture": "topk", "apply_b_dec_to_input": True, "k": sae.cfg.k}  # type: ignore[attr-defined]
    elif arch == "topk":
        cfg |= {"architecture": "topk", "apply_b_dec_to_input": True, "k": sae.cfg.k}  # type: ignore[attr-defined]
    elif arch == "jumprelu":
        cfg |= {"architecture": "jumprelu", "apply_b_dec_to_input": False}
        weights["threshold"] = sae.threshold.detach().contiguous().cpu()  # θ = rel_threshold · input_norm
    elif arch in ("batchtopk", "matryoshka"):
        theta = float(sd["threshold"])
        if theta < 0:
            raise ValueError("this BatchTopK SAE has no inference threshold yet (train past threshold_start)")
        cfg |= {"architecture": "jumprelu", "apply_b_dec_to_input": True}
        weights["threshold"] = torch.full((sae.d_sae,), theta, dtype=sd["W_enc"].dtype)
    else:
        raise _no_format(arch)
    return _write(path, cfg, weights)


def _no_format(arch: str) -> ValueError:
    return ValueError(f"SAELens has no inference format for assay's {arch!r} SAE (SAELens-loadable: relu, topk, "
                      "jumprelu, batchtopk, matryoshka, archetypal, jumprelu_transcoder, temporal with dense_context or k = d_sae)")


def _write(path: Path, cfg: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    with staged_folder(path) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2))
    return path


def _temporal(sae: Any, metadata: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens' "temporal" config and weights for an assay TemporalSAE (module docstring), or a ValueError
    naming every term SAELens' model cannot represent."""
    c = sae.cfg
    n, d, r = sae.d_sae, sae.d_in, c.attn_width
    differs = []
    if c.k != n and not c.dense_context:
        differs.append(f"assay's context codes are TopK_k-sparse (k={c.k}) where SAELens' are the dense ReLU codes "
                       f"(the same only for k = d_sae = {n}; or turn dense_context on)")
    if c.context is not None:
        differs.append(f"assay attends to the last context={c.context} tokens where SAELens attends to the whole "
                       "window (build the SAE with context=None)")
    if n % r:
        differs.append(f"SAELens' query/key width is d_sae / bottleneck_factor (a whole number), but d_sae={n} and "
                       f"d_attn={r} (choose d_attn dividing d_sae)")
    if differs:
        raise ValueError("SAELens' TemporalSAE cannot represent this temporal SAE: " + "; ".join(differs) + ". Keep "
                         "it as an assay artifact (assay.artifact.save_artifact) or a trainer checkpoint")
    dec = sae.W_dec.detach().contiguous().cpu()
    weights = {"W_dec": dec, "b_dec": sae.b_dec.detach().contiguous().cpu()}
    for theirs, w, b in (("q_target", sae.W_q.detach().T, sae.b_q.detach()),
                         ("k_ctx", sae.W_k.detach().T, sae.b_k.detach())):  # nn.Linear weights are [out, in]
        weights[f"attn_layers.0.{theirs}.weight"] = w.contiguous().cpu()
        weights[f"attn_layers.0.{theirs}.bias"] = b.contiguous().cpu()
    for theirs in ("v_ctx", "c_proj"):
        weights[f"attn_layers.0.{theirs}.weight"] = torch.eye(n, dtype=dec.dtype)
        weights[f"attn_layers.0.{theirs}.bias"] = torch.zeros(n, dtype=dec.dtype)
    ratio = 1.0 if c.lam is None else c.lam * 4 * d  # λ / λ_SAELens; SAELens fixes λ = 1/(4 d_in)
    tied = ratio == 1.0
    if not tied:
        weights["W_enc"] = (ratio * dec.T).contiguous()
    cfg = {"architecture": "temporal", "d_in": d, "d_sae": n, "dtype": str(dec.dtype).removeprefix("torch."),
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "constant_scalar_rescale",
           "activation_normalization_factor": float(sae.input_scale), "reshape_activations": "none",
           "n_heads": c.n_heads, "n_attn_layers": 1, "bottleneck_factor": n // r, "sae_diff_type": "topk",
           "kval_topk": c.k, "tied_weights": tied, "metadata": dict(metadata or {})}
    return cfg, weights


def load_saelens(path: str | Path) -> SAE:
    """Read an SAELens SAE folder into the matching assay SAE (validated shapes, clear errors)."""
    from assay.dictionaries.jumprelu import JumpReLUConfig, JumpReLUSAE
    from assay.dictionaries.relu import ReLUConfig, ReLUSAE
    from assay.dictionaries.topk import TopKConfig, TopKSAE

    path = Path(path)
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{path} is not an SAELens SAE folder (needs {CFG_FILE} and {WEIGHTS_FILE})")
    cfg = json.loads((path / CFG_FILE).read_text())
    arch = cfg.get("architecture", "standard")
    if arch == "temporal":
        return _load_temporal(path, cfg, load_file(str(path / WEIGHTS_FILE)))
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported; "
                         "fold the normalisation into the weights first")
    w = load_file(str(path / WEIGHTS_FILE))
    if arch in ("transcoder", "skip_transcoder"):
        raise ValueError(f"{path}: SAELens {arch!r} is a ReLU transcoder, which assay does not have; assay reads "
                         "'jumprelu_transcoder' and 'jumprelu_skip_transcoder'")
    if arch in ("jumprelu_transcoder", "jumprelu_skip_transcoder"):
        return _load_jumprelu_transcoder(path, cfg, w)
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    for name, shape in (("W_enc", (d_in, d_sae)), ("b_enc", (d_sae,)), ("W_dec", (d_sae, d_in)), ("b_dec", (d_in,))):
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise ValueError(f"{path}: tensor {name} is {got}, expected {shape}")
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    b_enc = w["b_enc"]
    sae: SAE
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm", False):
            raise ValueError(f"{path}: rescale_acts_by_decoder_norm=True is not supported")
        sae = TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=int(cfg["k"])))
        if not apply_b_dec:  # assay TopK subtracts b_dec: compensate in b_enc
            b_enc = b_enc + w["b_dec"] @ w["W_enc"]
    elif arch in ("standard", "jumprelu"):
        sae = ReLUSAE(ReLUConfig(d_in=d_in, d_sae=d_sae)) if arch == "standard" else JumpReLUSAE(
            JumpReLUConfig(d_in=d_in, d_sae=d_sae))
        if apply_b_dec:
            b_enc = b_enc - w["b_dec"] @ w["W_enc"]
    else:
        raise ValueError(f"{path}: SAELens architecture {arch!r} is not supported (standard, topk, jumprelu, "
                         "jumprelu_transcoder, jumprelu_skip_transcoder, temporal)")
    with torch.no_grad():
        sae.W_enc.copy_(w["W_enc"])
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w["W_dec"])
        sae.b_dec.copy_(w["b_dec"])
        if arch == "jumprelu":
            if "threshold" not in w:
                raise ValueError(f"{path}: a jumprelu SAE needs a 'threshold' tensor")
            sae.set_threshold(w["threshold"])  # type: ignore[operator]
    return sae.eval()


def _load_jumprelu_transcoder(path: Path, cfg: dict[str, Any], w: dict[str, torch.Tensor]) -> SAE:
    """An SAELens JumpReLU (skip-)transcoder as an assay ``jumprelu_transcoder``."""
    from assay.dictionaries.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

    d_in, d_sae, d_out = int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["d_out"])
    skip = cfg["architecture"] == "jumprelu_skip_transcoder"
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,),
              "threshold": (d_sae,)} | ({"W_skip": (d_out, d_in)} if skip else {})
    for name, shape in shapes.items():
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise ValueError(f"{path}: tensor {name} is {got}, expected {shape}")
    sae = JumpReLUTranscoder(JumpReLUTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out, skip=skip))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if skip else ()):
            getattr(sae, name).copy_(w[name])
        sae.set_threshold(w["threshold"])
    return sae.eval()


def _load_temporal(path: Path, cfg: dict[str, Any], w: dict[str, torch.Tensor]) -> SAE:
    """An SAELens "temporal" SAE as an assay TemporalSAE, where it is the same model (module docstring): one
    attention layer with identity value and output projections (a novel code TopK_k with k < d_sae reads as
    ``dense_context=True``, a dense one as k = d_sae), W_enc tied or a multiple of W_decᵀ. Otherwise a
    ValueError naming every term that differs."""
    from assay.dictionaries.temporal import TemporalConfig, TemporalSAE

    d, n = int(cfg["d_in"]), int(cfg["d_sae"])
    r = n // int(cfg.get("bottleneck_factor", 64))
    tied = bool(cfg.get("tied_weights", True))
    a = "attn_layers.0."
    shapes = {"W_dec": (n, d), "b_dec": (d,)} | ({} if tied else {"W_enc": (d, n)}) | {
        f"{a}{m}.{p}": shape for m, out in (("q_target", r), ("k_ctx", r), ("v_ctx", n), ("c_proj", n))
        for p, shape in (("weight", (out, n)), ("bias", (out,)))}
    for name, shape in shapes.items():
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise ValueError(f"{path}: tensor {name} is {got}, expected {shape}")
    differs = []
    if int(cfg.get("n_attn_layers", 1)) != 1:
        differs.append(f"it has {cfg['n_attn_layers']} attention layers (assay: one)")
    eye = torch.eye(n, dtype=w["W_dec"].dtype)
    if not all(torch.equal(w[f"{a}{m}.weight"], eye) and not w[f"{a}{m}.bias"].any() for m in ("v_ctx", "c_proj")):
        differs.append("its value and output projections (v_ctx, c_proj) are learned n × n maps, where assay's "
                       "values are each head's own past codes (the identity)")
    k = cfg.get("kval_topk")
    k = int(k) if cfg.get("sae_diff_type", "topk") == "topk" and k is not None else n
    ratio = 1.0
    if not tied:
        ratio = float((w["W_enc"] * w["W_dec"].T).sum() / w["W_dec"].square().sum())
        if not torch.allclose(w["W_enc"], ratio * w["W_dec"].T, rtol=1e-5, atol=1e-7):
            differs.append("its W_enc is not a multiple of W_decᵀ (assay's encoder is λ W_decᵀ)")
    if not cfg.get("apply_b_dec_to_input", True):
        differs.append("it does not subtract b_dec from the input (assay centres x − b)")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "constant_scalar_rescale"):
        differs.append(f"normalize_activations={norm!r} (assay keeps a constant input scale only)")
    if differs:
        raise ValueError(f"{path}: assay's TemporalSAE cannot represent this SAELens temporal SAE: " + "; ".join(differs))
    sae = TemporalSAE(TemporalConfig(d_in=d, d_sae=n, k=k, n_heads=int(cfg.get("n_heads", 8)), d_attn=r,
                                     lam=None if tied else ratio / (4 * d), dense_context=k < n))
    with torch.no_grad():
        sae.W_dec.copy_(w["W_dec"])
        sae.b_dec.copy_(w["b_dec"])
        sae.W_q.copy_(w[f"{a}q_target.weight"].T)
        sae.b_q.copy_(w[f"{a}q_target.bias"])
        sae.W_k.copy_(w[f"{a}k_ctx.weight"].T)
        sae.b_k.copy_(w[f"{a}k_ctx.bias"])
        if norm == "constant_scalar_rescale":
            sae.fold_input_scale(float(cfg.get("activation_normalization_factor", 1.0)))
    return sae.eval()
