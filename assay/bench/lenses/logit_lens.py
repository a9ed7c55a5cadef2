"""The logit-lens read-out behind ``assay lens``: every layer of a real LM decoded at a prompt's positions.

nostalgebraist 2020, "interpreting GPT: the logit lens": each layer's residual decoded with the model's
final norm and unembedding (:func:`assay.lenses.logit_lens.logit_lens`). Per layer: the top next-token
prediction at every chosen prompt position and the KL to the model's final distribution at the last
position; a heatmap of the top-1 probability annotated with the tokens, whitespace made visible
(:func:`token_label`: ␣ space, ⏎ newline, ⇥ tab, ∅ empty) and sized to the grid so that every label is
at least 8 pt at the saved size (:func:`lens_figure`).

Outputs in ``out_dir``: ``results.json``, ``plots/logit_lens.png`` and the report section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.bench.lenses.lm import layer_number, layer_sites

__all__ = ["LensConfig", "run_lens", "token_label", "lens_figure", "LABEL_PT"]

LABEL_PT = 8.0
"""Font size (points) of every token, tick and axis label of the heatmap."""

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}
_CHAR_IN = 0.6 * LABEL_PT / 72  # mean glyph width of DejaVu Sans at LABEL_PT, inches


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


def token_label(token: str, max_chars: int | None = 10) -> str:
    """A token as visible text: ␣ for a space, ⏎ for a newline, ⇥ for a tab, ∅ for the empty token, other
    unprintable characters escaped (``\\r``, ``\\x00``); cut to ``max_chars`` with … (None: whole)."""
    if token == "":
        return "∅"
    text = "".join(_VISIBLE.get(c, c if c.isprintable() else repr(c)[1:-1]) for c in token)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars - 1] + "…"
    return text


def lens_figure(rows: list[dict[str, Any]], tokens: list[str], cols: list[int], title: str) -> Any:
    """The heatmap (a ``matplotlib.figure.Figure``): layers × positions, cells coloured by the top-1
    probability and labelled with the top token; the figure grows with the grid (columns as wide as
    their longest label, rows 0.3 in) so every label stays :data:`LABEL_PT` points."""
    from assay.report import new_figure

    cells = [[token_label(t) for t in r["top_at"]] for r in rows]
    heads = [f"{c}: {token_label(t)}" for c, t in zip(cols, tokens)]
    widest = max((len(x) for row in cells for x in row), default=1)
    col_w = max(0.45, (widest + 1) * _CHAR_IN)
    rotate = max(len(h) for h in heads) * _CHAR_IN > col_w
    below = 0.9 + (max(len(h) for h in heads) * _CHAR_IN * 0.71 if rotate else 0.2)  # x labels + axis title
    fig = new_figure((max(4.5, 2.4 + col_w * len(cols)), below + 0.6 + 0.3 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow([r["p_top_at"] for r in rows], aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, origin="lower")
    for i, r in enumerate(rows):
        for j, label in enumerate(cells[i]):
            ax.text(j, i, label, ha="center", va="center", fontsize=LABEL_PT, parse_math=False,
                    color="white" if r["p_top_at"][j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), heads, fontsize=LABEL_PT, rotation=45 if rotate else 0,
                  ha="right" if rotate else "center", rotation_mode="anchor" if rotate else "default")
    for lab in ax.get_xticklabels():
        lab.set_parse_math(False)
    ax.set_yticks(range(len(rows)), [r["site"].rsplit(".", 1)[-1] for r in rows], fontsize=LABEL_PT)
    ax.set_xlabel("prompt position: input token\n(␣ space, ⏎ newline, ⇥ tab, ∅ empty)", fontsize=LABEL_PT + 1)
    ax.set_ylabel("layer", fontsize=LABEL_PT + 1)
    ax.set_title(title, fontsize=LABEL_PT + 1, wrap=True, parse_math=False)
    bar = fig.colorbar(im, ax=ax, fraction=min(0.15, 0.8 / fig.get_size_inches()[0]), pad=0.02)
    bar.set_label("top-1 probability", fontsize=LABEL_PT + 1)
    bar.ax.tick_params(labelsize=LABEL_PT)
    fig.tight_layout()
    return fig


def _plot(rows: list[dict[str, Any]], tokens: list[str], cols: list[int], path: Path, title: str) -> None:
    from assay.report import save_figure

    save_figure(lens_figure(rows, tokens, cols, title), path, dpi=110)


def _section(out: Path, r: dict[str, Any]) -> None:
    from assay.report import Plot, Section, Table, write_section

    head = [f"{c}: {token_label(t, None)}" for c, t in zip(r["positions"], r["tokens"])]
    rows = [[layer_number(x["site"], i), *(token_label(t, None) for t in x["top_at"]), round(x["kl_to_final"], 4)]
            for i, x in enumerate(r["layers"])]
    rows.append(["model", *(token_label(t, None) for t in r["final_top_at"]), 0.0])
    table = Table("Logit lens: top token per layer at each prompt position",
                  ["layer", *head, "KL to final (last position, nats)"], rows)
    notes = [f"{r['model']} on {r['prompt']!r}: each layer's residual decoded with the model's final norm and "
             "unembedding (nostalgebraist 2020). Columns are prompt positions (position: input token); cells are "
             "the lens's top next-token prediction there; whitespace is drawn as ␣ (space), ⏎ (newline), ⇥ (tab), ∅ (empty "
             "token).", f"The model's own next token: {r['final_top']!r}."]
    write_section(out, Section(f"Logit lens: {r['model']}", [table],
                               [Plot("Top-1 token and its probability per layer and position", Path(r["plot"]))],
                               notes))
