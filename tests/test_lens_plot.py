"""The logit-lens heatmap of ``assay lens`` (assay/bench/lenses/logit_lens.py): whitespace drawn visibly,
labels at 8 pt that fit their cells, a figure that grows with the grid; end to end on a tiny stand-in LM."""

import json
import re
import types

import pytest
import torch

from assay.bench.lenses.logit_lens import LensConfig, lens_figure, run_lens, token_label
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = ["<s>", "", " ", "\n", "\t", "  ", "\n\n", " \n", "\t\t", " The", " capital", " of", " France", " is",
         " Paris", " London", "\r", *(f" w{i}" for i in range(47))]


class ToyTokenizer:
    """Greedy longest match over :data:`VOCAB` (every prompt below is made of its tokens)."""

    bos_token_id, pad_token_id, eos_token_id = 0, 0, 0

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            best = max((j for j, v in enumerate(VOCAB) if v and j and text.startswith(v, i)), key=lambda j: len(VOCAB[j]))
            ids.append(best)
            i += len(VOCAB[best])
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


def stand_in_lm(n_layers=6):
    """A seeded random Llama over :data:`VOCAB` whose unembedding favours the whitespace tokens."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[1:9] *= 4
    return types.SimpleNamespace(name="toy-llama", model=model, tokenizer=ToyTokenizer(),
                                 layer_sites=[f"model.layers.{i}" for i in range(n_layers)])


def test_token_label_shows_whitespace():
    assert [token_label(t) for t in (" ", "\n", "\t", "", " Paris", "  \n", "\t\t")] == \
        ["␣", "⏎", "⇥", "∅", "␣Paris", "␣␣⏎", "⇥⇥"]
    assert token_label("\r") == "\\r" and token_label("a\x00b") == "a\\x00b" and token_label("\xa0") == "\\xa0"
    assert token_label("Paris") == "Paris" and token_label("é漢") == "é漢"  # printable text is left alone
    assert token_label("abcdefghijkl") == "abcdefghi…" and len(token_label("x" * 50)) == 10
    assert token_label(" " * 12, None) == "␣" * 12


def _grid(n_layers, tokens, top="Paris"):
    rows = [{"site": f"model.layers.{i}", "top_at": [top] * len(tokens), "p_top_at": [0.9] * len(tokens)}
            for i in range(n_layers)]
    return rows, tokens, list(range(len(tokens)))


def _texts_fit(fig):
    """Every text at >= 8 pt inside the figure, and each cell label narrower than its column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # as when saved: places the axis labels
    renderer = canvas.get_renderer()
    box = fig.bbox
    (ax, _bar) = fig.axes
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    for t in texts:
        assert t.get_fontsize() >= 8, t.get_text()  # the audit: 8 pt at the saved size
        e = t.get_window_extent(renderer)
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, t.get_text()
    col_px = ax.get_window_extent(renderer).width / len(ax.get_xticks())
    for t in ax.texts:
        assert t.get_window_extent(renderer).width < col_px, t.get_text()


def test_figure_grows_with_the_grid_and_labels_fit():
    five = ["<s>", " The", " is", "\n", " "]
    small = lens_figure(*_grid(2, five), "small")
    tall = lens_figure(*_grid(30, five), "tall")
    wide = lens_figure(*_grid(2, [*five, *[" capital"] * 15]), "wide")
    long_tokens = lens_figure(*_grid(2, five, top=" internationalisation"), "long")
    tiny = lens_figure(*_grid(1, ["<s>"]), "one cell")
    (w0, h0), (w1, h1), (w2, h2), (w3, _) = (f.get_size_inches() for f in (small, tall, wide, long_tokens))
    assert h1 >= h0 + 0.3 * 28 and w1 == w0  # 0.3 in per layer
    assert w2 >= w0 + 0.45 * 15 and h2 >= h0  # at least 0.45 in per position
    assert w3 > w0  # columns widen for longer labels (cut at 10 characters)
    for fig in (small, tall, wide, long_tokens, tiny):
        _texts_fit(fig)


def test_run_lens_on_a_stand_in_model(tmp_path):
    lm = stand_in_lm()
    prompt = " The capital of France is\n\t Paris \r"
    r = run_lens(LensConfig(prompt=prompt, out_dir=tmp_path), lm)
    assert r["tokens"] == ["<s>", " The", " capital", " of", " France", " is", "\n", "\t", " Paris", " ", "\r"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tokens"] == r["tokens"]  # raw tokens kept; only the display maps whitespace
    png = tmp_path / "plots" / "logit_lens.png"
    assert png.stat().st_size > 1000
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]  # 110 dpi: at least 0.45 in per position and 0.3 in per layer
    assert w > 110 * 0.45 * len(r["tokens"]) and h > 110 * 0.3 * len(r["layers"])
    (table,) = read_section(tmp_path).tables
    assert table.columns[7:11] == ["6: ⏎", "7: ⇥", "8: ␣Paris", "9: ␣"] and table.columns[11] == "10: \\r"
    shown = {c for row in table.rows for c in row[1:-1]}
    raw = {t for x in r["layers"] for t in x["top_at"]}
    assert shown == {token_label(t, None) for t in raw} | {token_label(t, None) for t in r["final_top_at"]}
    assert any(re.search("[␣⏎⇥∅]", c) for c in shown)  # the stand-in predicts whitespace somewhere
    assert not any(c.strip() == "" for c in shown)  # and no cell is blank
