"""Feature attribution on a real offline model — heatmaps for photos, scores for tokens (the work behind
``assay attribute``; the command only prints).

* ``--model efficientnet-lite0`` (default): attributes the top class (or ``--target``) of each of
  scikit-image's bundled photos (``--images chelsea --images coffee``) with any registered method
  (:data:`assay.attribution.registry.METHODS`: the engine methods of Han, Srinivas & Lakkaraju 2022,
  "Which Explanation Should I Choose?", IG by default, Sundararajan, Taly & Yan 2017; FullGrad;
  Grad-CAM) and saves one PNG per photo (the photo beside its channel-summed attribution map).
* ``--model smollm2-135m`` / ``minilm-l6``: attributes the top next token (SmolLM2) or a pooled
  output unit (MiniLM) to each token of ``--prompt`` at the input-embedding layer with an engine
  method and prints one score per token; ``--text-baseline`` picks the reference embedding (pad token
  by default, see :func:`assay.attribution.text.embedding_baseline`).

The explained output is the log-softmax of the class / next token by default (``--output``): a raw logit
of a softmax classifier changes under a shift g(x) shared by all logits that leaves the classifier
unchanged, so its gradient explanations need not be about the classifier (Srinivas & Fleuret 2021,
"Rethinking the Role of Gradient-based Attribution Methods for Model Interpretability"); explaining raw
logits of such a model is allowed but warned about, in the terminal and in the report. MiniLM's pooled
unit has no softmax and is explained as is.

Writes ``<out_dir>/attribution`` (an artifact: config + the attribution tensors), ``<out_dir>/results.json`` and the
report section (``<out_dir>/section.json`` + ``<out_dir>/report.html``: the heatmaps, or the per-token score table,
and the completeness gap Σφ − (f(x) − f(x')) of methods with a reference input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assay.attribution.engine import OutputKind
from assay.attribution.registry import ENGINE_METHODS, METHODS, configure
from assay.attribution.text import TextBaseline
from assay.config import ConfigError

__all__ = ["AttributeCommand", "SOFTMAX_MODELS", "GAP_WARN_SHARE", "explained_output", "logit_warning", "save_heatmap",
           "run_attribution"]

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
"""The registered method names (typer needs a Literal for its choices)."""

SOFTMAX_MODELS = ("efficientnet-lite0", "smollm2-135m")
"""Models whose outputs are softmax logits (ImageNet classes, next tokens); minilm-l6 is an encoder."""


@dataclass(frozen=True, kw_only=True)
class AttributeCommand:
    """Attribute a real model's prediction to its input: photo heatmaps (EfficientNet) or token scores (LMs)."""

    model: Literal["efficientnet-lite0", "smollm2-135m", "minilm-l6"] = "efficientnet-lite0"
    """Offline model to explain (see `assay.models.offline`)."""
    method: Method = "integrated_gradients"
    """Attribution method (FullGrad and Grad-CAM explain photos only)."""
    images: tuple[str, ...] = ("chelsea", "coffee")
    """scikit-image bundled photos (skimage.data names) for the image model."""
    prompt: str = "The capital of France is"
    """Text for the language models."""
    text_baseline: TextBaseline = "pad"
    """Reference embedding of the language models (IG, input×gradient, occlusion, LIME, KernelSHAP):
    'pad' — the pad (else eos) token's embedding at every position; 'zero'; 'mean' — the vocabulary's
    mean embedding. Photos always use 0 (the normalised mean colour)."""
    target: int | None = None
    """Class / token id to explain; None explains each input's top prediction."""
    output: OutputKind | None = None
    """Which output is explained; none given: log_softmax for the softmax models (the photo classifier's
    class, SmolLM2's next token: the model's own log-probability, unchanged by a shift shared by all logits,
    Srinivas & Fleuret 2021), logit for minilm-l6 (a pooled embedding unit, no softmax). Raw logits of a
    softmax model are explained with a warning."""
    steps: int = 32
    """IG quadrature nodes, SmoothGrad noisy copies, or LIME/KernelSHAP/C-LIME perturbations."""
    patch: int = 16
    """Image methods that perturb regions (occlusion, LIME, KernelSHAP, C-LIME) use patch×patch squares."""
    gradcam_layer: str | None = None
    """Grad-CAM's site; None: the model's last layer site (its last block)."""
    memory_budget_mb: float = 128.0
    """Memory for one chunk of perturbed rows (the engine's single memory knob)."""
    seed: int = 0
    """Seed of the stochastic methods."""
    out_dir: Path | None = None
    """Output folder (PNG heatmaps, results.json, the attribution artifact, the report section); none given:
    runs/attribute/<model>, so photo and text runs never share a folder."""

    @property
    def folder(self) -> Path:
        """Where this run writes: ``out_dir``, else ``runs/attribute/<model>``."""
        return self.out_dir if self.out_dir is not None else Path("runs/attribute") / self.model

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {self.steps}")
        if self.patch < 1:
            raise ConfigError(f"patch must be ≥ 1, got {self.patch}")
        if self.model == "efficientnet-lite0" and not self.images:
            raise ConfigError("give at least one --images name (e.g. chelsea, coffee, astronaut)")
        if self.model != "efficientnet-lite0" and not self.prompt:
            raise ConfigError("--prompt must not be empty for a language model")
        if self.model != "efficientnet-lite0" and self.method not in ENGINE_METHODS:
            raise ConfigError(f"--method {self.method} explains photos only; for a language model choose one of "
                              f"{', '.join(ENGINE_METHODS)}")


def explained_output(cfg: AttributeCommand) -> OutputKind:
    """``cfg.output``, or the model's default: log_softmax for the softmax models, logit for minilm-l6."""
    if cfg.output is not None:
        return cfg.output
    return "log_softmax" if cfg.model in SOFTMAX_MODELS else "logit"


def logit_warning(cfg: AttributeCommand) -> str | None:
    """The warning for raw logits of a softmax model (Srinivas & Fleuret 2021), else None."""
    if cfg.model not in SOFTMAX_MODELS or explained_output(cfg) != "logit":
        return None
    return ("RAW LOGITS: this explains a raw logit of a softmax classifier. Adding any g(x) to every logit leaves "
            "the predictions unchanged but moves the gradient by ∇g, so the map can show g rather than what the "
            "classifier decides on (Srinivas & Fleuret 2021, 'Rethinking the Role of Gradient-based Attribution "
            "Methods'). Explain --output log_softmax (the default) for the classifier's own score; "
            "assay.evaluate.attribution_sanity.logit_shift_test measures the difference.")


def method_config(cfg: AttributeCommand, layer: str | None = None) -> Any:
    """The config for ``cfg.method`` with the command's shared settings (``layer``: Grad-CAM's site)."""
    return configure(cfg.method, steps=cfg.steps, n_samples=max(3, cfg.steps), seed=cfg.seed,
                     output=explained_output(cfg), memory_budget_mb=cfg.memory_budget_mb, layer=layer)


def _skimage_photo(name: str) -> Any:
    from skimage import data

    fn = getattr(data, name, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"skimage.data has no photo {name!r}; try chelsea, coffee, astronaut, rocket")
    return fn()


def save_heatmap(path: Path, image: Any, values: Any, title: str) -> None:
    """PNG of the photo (``[H, W, 3]`` in [0, 1]) beside the channel-summed signed attribution map."""
    from assay.report import new_figure, save_figure

    heat = (values.sum(0) if values.dim() == 3 else values).numpy()  # [C, H, W] or a map [H, W]
    lim = float(abs(heat).max()) or 1.0
    fig = new_figure((8, 4))
    axes = fig.subplots(1, 2)
    axes[0].imshow(image)
    axes[1].imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def _images(cfg: AttributeCommand, loaded) -> dict:
    import torch

    from assay.attribution.neighbourhoods import grid_feature_mask
    from assay.models.offline_vision import preprocess_image

    x = torch.stack([preprocess_image(_skimage_photo(n)) for n in cfg.images])
    shape = tuple(x.shape[1:])
    entry = METHODS[cfg.method]
    mcfg = method_config(cfg, layer=cfg.gradcam_layer or loaded.layer_sites[-1])
    kwargs = {"feature_mask": grid_feature_mask(shape, (shape[0], cfg.patch, cfg.patch))} if entry.config.feature_groups else {}
    result = entry.run(loaded.model, x, cfg.target, config=mcfg, **kwargs)
    values = entry.values(result).detach()
    nan = torch.full((x.shape[0],), float("nan"))
    # f_t(x) where the method reports it (Grad-CAM does not); Σφ − Δf only for an Attribution (FullGrad's own
    # decomposition gap measures something else)
    output = getattr(result, "output", nan)
    gap = result.completeness_gap if entry.map_field is None else nan
    rows = []
    for i, name in enumerate(cfg.images):
        png = cfg.folder / f"heatmap_{name}.png"
        shown = ((x[i] * 128 + 127) / 255).clamp(0, 1).permute(1, 2, 0).numpy()
        target = int(result.target[i])
        save_heatmap(png, shown, values[i], f"{name}: {cfg.method} of class {target}")
        rows.append({"image": name, "target": target, "output": float(output[i]),
                     "completeness_gap": float(gap[i]), "png": str(png)})
    return {"rows": rows, "values": values}


def _image_section(cfg: AttributeCommand, res: dict) -> Any:
    from assay.report import Plot, Section, Table

    gap = _has_reference(cfg.method)
    table = Table("Explained output per photo",
                  ["photo", "class", "f_t(x)", "Σφ − (f_t(x) − f_t(0))" if gap else "Σφ − Δf (no reference input)"],
                  [[r["image"], r["target"], r["output"], r["completeness_gap"]] for r in res["rows"]])
    plots = [Plot(f"{r['image']}: {cfg.method} of class {r['target']} (red: positive, blue: negative; channels summed)",
                  Path(r["png"])) for r in res["rows"]]
    return Section(f"Feature attribution: {cfg.model}, {cfg.method}", [table], plots, [*_warnings(res), *_notes(cfg)])


def _text_section(cfg: AttributeCommand, res: dict) -> Any:
    from assay.report import Section, Table

    out = Table("Explained output", ["target", "token", "f_t(x)", "f_t(baseline)", "completeness gap", "baseline"],
                [[res["target"], res["target_token"], res["output"], res["baseline_output"], res["completeness_gap"],
                  cfg.text_baseline if _has_reference(cfg.method) else "none"]])
    scores = Table("Per-token scores", ["position", "token", "score"],
                   [[i, r["token"], r["score"]] for i, r in enumerate(res["rows"])])
    return Section(f"Feature attribution: {cfg.model}, {cfg.method}", [out, scores], [],
                   [*_warnings(res), f"prompt: {cfg.prompt!r}", *_notes(cfg)])


def _warnings(res: dict) -> list[str]:
    return [w for w in (res.get("warning"), res.get("logit_warning")) if w]


def _has_reference(method: str) -> bool:
    return METHODS[method].config.uses_baseline


def _notes(cfg: AttributeCommand) -> list[str]:
    out = explained_output(cfg)
    notes = [f"method {cfg.method}, output {out}" + (" (the default)" if cfg.output is None else "")
             + f", steps/samples {cfg.steps}"]
    if METHODS[cfg.method].config.complete:
        notes.append(f"The completeness gap is Σφ − (f_t(x) − f_t(baseline)): near 0 for a converged {cfg.method}; "
                     "a large gap means the attribution does not account for the output change (more steps, or "
                     "another baseline).")
    elif _has_reference(cfg.method):
        notes.append(f"Σφ − (f_t(x) − f_t(baseline)) compares the summed effects of removing one feature at a time "
                     f"with the effect of removing all of them; {cfg.method} promises no completeness, so a non-zero "
                     "value measures interactions between features, not an error.")
    return notes


GAP_WARN_SHARE = 0.1
"""A complete method (IG, KernelSHAP) whose |Σφ − Δf| exceeds this share of |Δf| is flagged as untrustworthy."""


def _gap_warning(method: str, gap: float, relative: float, delta: float) -> str | None:
    """The warning for an incomplete attribution by a method that promises completeness, else None."""
    if not METHODS[method].config.complete or not relative > GAP_WARN_SHARE:  # NaN (no reference) is never flagged
        return None
    return (f"UNTRUSTWORTHY: the token scores do not add up to the output change: Σφ − Δf = {gap:+.4g} against "
            f"Δf = {delta:+.4g} ({relative:.0%} of it; a complete {method} is within {GAP_WARN_SHARE:.0%}). The "
            "path integral has not converged (try more --steps or another --text-baseline), or the model is too "
            "sharp along the path for this method; occlusion or input_x_gradient give scores without this axiom.")


def _text(cfg: AttributeCommand, loaded) -> dict:
    from assay.attribution.text import attribute_tokens, decoded_tokens

    pool = "mean" if cfg.model == "minilm-l6" else "position"
    r = attribute_tokens(loaded.model, loaded.tokenizer, cfg.prompt, cfg.target, config=method_config(cfg), pool=pool,
                         baseline=cfg.text_baseline)
    a = r.attribution
    target = int(a.target[0])
    label = decoded_tokens(loaded.tokenizer, [target])[0] if pool == "position" else f"unit {target}"
    delta = float(a.output[0]) - float(a.baseline_output[0])
    warning = _gap_warning(cfg.method, r.completeness_gap, r.relative_gap, delta)
    return {"rows": [{"token": t, "score": s} for t, s in zip(r.tokens, r.scores.tolist())],
            "target": target, "target_token": str(label), "output": float(a.output[0]),
            "baseline_output": float(a.baseline_output[0]), "completeness_gap": r.completeness_gap,
            "relative_gap": r.relative_gap, "warning": warning,
            "text_baseline": cfg.text_baseline, "values": a.values.detach()}


def run_attribution(cfg: AttributeCommand) -> dict:
    """Load the model, attribute, write the outputs into ``cfg.folder``; returns the results (``rows``, the
    explained output, and the warnings ``warning`` (an incomplete complete-method) and ``logit_warning``)."""
    from assay.artifact import save_artifact
    from assay.models import offline
    from assay.report import write_section

    out = cfg.folder
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("heatmap_*.png"):  # a previous run's photos must not mix with this run's
        stale.unlink()
    loaded = offline.load(cfg.model)
    is_text = loaded.tokenizer is not None
    res = _text(cfg, loaded) if is_text else _images(cfg, loaded)
    res["output_kind"] = explained_output(cfg)
    res["logit_warning"] = logit_warning(cfg)
    values = res.pop("values")
    save_artifact(out / "attribution", kind="attribution", config=cfg,
                  tensors={"attribution": {"values": values.contiguous()}}, meta={"model": cfg.model, "method": cfg.method})
    (out / "results.json").write_text(json.dumps({"model": cfg.model, "method": cfg.method, **res}, indent=1))
    write_section(out, _text_section(cfg, res) if is_text else _image_section(cfg, res))
    res["out_dir"] = str(out)
    return res
