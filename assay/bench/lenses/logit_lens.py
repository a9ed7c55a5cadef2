"""The logit-lens read-out behind ``assay lens``: every layer of a real LM decoded at a prompt's positions.

nostalgebraist 2020, "interpreting GPT: the logit lens": each layer's residual decoded with the model's
final norm and unembedding (:func:`assay.lenses.logit_lens.logit_lens`). Per layer: the top next-token
prediction at every chosen prompt position and the KL to the model's final distribution at the last
position; a heatmap of the top-1 probability annotated with the tokens.

Outputs in ``out_dir``: ``results.json``, ``plots/logit_lens.png`` and the report section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.bench.lenses.lm import layer_number, layer_sites

__all__ = ["LensConfig", "run_lens"]


@dataclass(frozen=True, kw_only=True)
class LensConfig:
    """The logit lens over layers on one prompt."""

    model: str = "smollm2-135m"
    """Offline model name."""
    prompt: str = "The capital of France is"
    """The prompt to read."""
    layers: tuple[int, ...] = ()
    """Layer indices (empty: all)."""
    positions: tuple[int, ...] = ()
    """Prompt positions to show (0 is the BOS; negative counts back from the end; empty: all)."""
    out_dir: Path = Path("runs/lens")
    """Where results.json, the heatmap and the report section go."""


def run_lens(cfg: LensConfig, lm: Any = None) -> dict[str, Any]:
    """Decode every layer at the chosen positions; ends by writing the report section."""
    from assay.lenses.logit_lens import logit_lens
    from assay.lenses.text import encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    sites = layer_sites(lm, cfg.layers)
    batch = encode_texts(lm.tokenizer, [cfg.prompt])
    T = batch.input_ids.shape[1]
    bad = [p for p in cfg.positions if not -T <= p < T]
    if bad:
        raise ValueError(f"position(s) {bad} do not exist; the prompt has {T} tokens (BOS included): use 0..{T - 1} "
                         f"or -{T}..-1")
    cols = sorted({p % T for p in cfg.positions}) if cfg.positions else list(range(T))
    res = logit_lens(lm.model, sites, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    dec = lm.tokenizer.decode
    probs = res.logits[:, 0, cols].softmax(-1)
    top = probs.max(-1)
    rows = []
    for i, s in enumerate(sites):
        top3 = res.logits[i, 0, -1].topk(3)
        rows.append({"site": s, "top": [dec([t]) for t in top3.indices.tolist()],
                     "kl_to_final": float(res.kl[i, 0, -1]),
                     "top_at": [dec([t]) for t in top.indices[i].tolist()], "p_top_at": top.values[i].tolist(),
                     "kl_at": res.kl[i, 0, cols].tolist()})
    final_top = dec([int(res.final_logits[0, -1].argmax())])
    out = Path(cfg.out_dir)
    plot = out / "plots" / "logit_lens.png"
    tokens = [dec([t]) for t in batch.input_ids[0, cols].tolist()]
    _plot(rows, tokens, cols, plot, f"{lm.name}: logit lens on {cfg.prompt!r}")
    result = {"model": lm.name, "prompt": cfg.prompt, "positions": cols, "tokens": tokens, "final_top": final_top,
              "final_top_at": [dec([int(t)]) for t in res.final_logits[0, cols].argmax(-1).tolist()],
              "layers": rows, "plot": str(plot)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _section(out, result)
    return result


def _plot(rows: list[dict[str, Any]], tokens: list[str], cols: list[int], path: Path, title: str) -> None:
    from assay.report import new_figure, save_figure

    path.parent.mkdir(parents=True, exist_ok=True)
    grid = [r["p_top_at"] for r in rows]
    fig = new_figure((1.2 + 1.1 * len(cols), 1.2 + 0.28 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, origin="lower")
    for i, r in enumerate(rows):
        for j, t in enumerate(r["top_at"]):
            ax.text(j, i, repr(t)[1:-1][:10], ha="center", va="center", fontsize=6, parse_math=False,
                    color="white" if r["p_top_at"][j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), [f"{c}: {repr(t)[1:-1][:10]}" for c, t in zip(cols, tokens)], rotation=45,
                  ha="right", fontsize=7)
    for lab in ax.get_xticklabels():
        lab.set_parse_math(False)
    ax.set_yticks(range(len(rows)), [r["site"].rsplit(".", 1)[-1] for r in rows], fontsize=6)
    ax.set_xlabel("prompt position: input token")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="top-1 probability")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _section(out: Path, r: dict[str, Any]) -> None:
    from assay.report import Plot, Section, Table, write_section

    head = [f"{c}: {t!r}" for c, t in zip(r["positions"], r["tokens"])]
    rows = [[layer_number(x["site"], i), *x["top_at"], round(x["kl_to_final"], 4)] for i, x in enumerate(r["layers"])]
    rows.append(["model", *r["final_top_at"], 0.0])
    table = Table("Logit lens: top token per layer at each prompt position",
                  ["layer", *head, "KL to final (last position, nats)"], rows)
    notes = [f"{r['model']} on {r['prompt']!r}: each layer's residual decoded with the model's final norm and "
             "unembedding (nostalgebraist 2020). Columns are prompt positions (position: input token); cells are "
             "the lens's top next-token prediction there.", f"The model's own next token: {r['final_top']!r}."]
    write_section(out, Section(f"Logit lens: {r['model']}", [table],
                               [Plot("Top-1 token and its probability per layer and position", Path(r["plot"]))],
                               notes))
