"""Plotting never touches the user's matplotlib backend: no library module calls ``matplotlib.use`` or
imports pyplot (checked on the source), and running every plotting path in a fresh interpreter whose
backend was set to "svg" leaves it "svg" with pyplot never imported, while the images are written.
``save_figure`` writes what ``Figure.savefig`` writes, and an SVG without a date (same figure, same bytes).
The bench's log L0 axis has plain, non-overlapping tick labels over any span."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import assay

pytest.importorskip("matplotlib")

ROOT = Path(assay.__file__).parent


def _violations(path: Path) -> list[str]:
    """Each ``matplotlib.use(...)`` call and pyplot import in the file at ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name in ("matplotlib.pyplot", "pylab")]
        elif isinstance(node, ast.ImportFrom):
            if node.module in ("matplotlib.pyplot", "pylab") or (
                    node.module == "matplotlib" and any(a.name in ("pyplot", "use") for a in node.names)):
                out.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("matplotlib", "mpl"):
            out.append(f"{node.func.value.id}.use(...)")
    return [f"{path.name}: {v}" for v in out]


def test_no_module_switches_the_backend_or_imports_pyplot(tmp_path):
    bad = [v for f in sorted(ROOT.rglob("*.py")) for v in _violations(f)]
    assert bad == []
    # the check itself catches each form
    probe = tmp_path / "probe.py"
    probe.write_text("import matplotlib\nimport matplotlib.pyplot as plt\nfrom matplotlib import pyplot\n"
                     "matplotlib.use('Agg', force=True)\n")
    assert len(_violations(probe)) == 3


SCRIPT = r"""
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")
import torch

out = Path(sys.argv[1])
from assay.bench.plots import draw_all
summary = [{"world": "w", "method": m, "level": f"k={k}", "metric": met, "mean": v, "ci_low": v - 0.1,
            "ci_high": v + 0.1, "n": 3}
           for m in ("topk", "relu") for k in (2, 4, 16, 40) for met, v in (("l0", float(k)), ("fvu", 1 / k),
                                                                         ("recovery_mcc", 0.5))]
runs = [{"world": "w", "method": m, "level": "k=4", "per_concept": {"a": 0.9, "b": 0.7}} for m in ("topk", "relu")]
files = draw_all(out / "bench", runs, summary)

from assay.evaluate.intervention import TradeoffCurve, plot_tradeoffs
files.append(plot_tradeoffs([TradeoffCurve("c", (0.0, 1.0), (0.1, 0.9), (0.0, 0.3))], out / "tradeoff.png"))

from assay.bench.real_model_attribution import save_heatmap
save_heatmap(out / "heat.png", torch.rand(8, 8, 3).numpy(), torch.randn(3, 8, 8), "t")
files.append(out / "heat.png")

from assay.bench.lenses import logit_lens, probe_sweep
rows = [{"site": f"model.layers.{i}", "auroc": 0.6, "auroc_low": 0.5, "auroc_high": 0.7,
         "p_top_at": [0.2, 0.9], "top_at": ["a", "$b"]} for i in range(3)]
probe_sweep._plot(rows, out / "probe.png", "probe")
logit_lens._plot(rows, ["x", "y"], [0, 1], out / "lens" / "lens.png", "lens")
files += [out / "probe.png", out / "lens" / "lens.png"]

from assay.bench.runner import BenchResult
def stat(world, method, level, metric, v):
    return {"world": world, "method": method, "level": level, "metric": metric, "mean": v, "ci_low": v - 0.05,
            "ci_high": v + 0.05, "n": 3}

from assay.bench.data_attribution import _bar_figure
lds = BenchResult("data-attribution", [], [stat("digits", m, "default", "lds", v) for m, v in (("trak", 0.4), ("random", 0.0))],
                  out / "da", 0, None)
files.append(Path(_bar_figure(lds, out / "da" / "lds.svg")))

from assay.bench.robustness import _robust_accuracy_plot
pgd = [{"world": "w", "method": "pgd", "level": f"eps={e}", "params": {"eps": e}} for e in (0.0, 0.1, 0.2)]
rob = BenchResult("robustness", pgd, [stat("w", "pgd", f"eps={e}", "robust_accuracy", 1 - e) for e in (0.0, 0.1, 0.2)],
                  out / "robust", 0, None)
files.append(_robust_accuracy_plot(rob).path)

print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                  "files": [str(f) for f in files], "sizes": [Path(f).stat().st_size for f in files]}))
"""


def test_plotting_keeps_the_backend_and_never_imports_pyplot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT.parent))
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT.parent, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["backend"] == "svg" and r["pyplot"] is False
    assert len(r["files"]) == 6 + 6 and all(s > 1000 for s in r["sizes"]), r


def test_save_figure_matches_savefig_and_svg_is_reproducible(tmp_path):
    from assay.report import new_figure, save_figure

    def draw():
        fig = new_figure((3, 2))
        fig.subplots().plot([0, 1, 2], [2, 0, 1], marker="o")
        return fig

    fig = draw()
    fig.savefig(tmp_path / "ref.png", dpi=80, bbox_inches="tight")
    assert save_figure(fig, tmp_path / "sub" / "a.png", dpi=80, tight=True) == tmp_path / "sub" / "a.png"
    assert (tmp_path / "sub" / "a.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "fixed"}):
        save_figure(draw(), tmp_path / "1.svg")
        save_figure(draw(), tmp_path / "2.svg")
    svg = (tmp_path / "1.svg").read_text()
    assert svg == (tmp_path / "2.svg").read_text() and "<dc:date>" not in svg


@pytest.mark.parametrize("lo,hi", [(4, 8), (2, 47), (1.5, 900), (1, 2e5)])
def test_log_axis_labels_are_plain_and_do_not_overlap(lo, hi):
    from assay.bench.plots import _log_ticks
    from assay.report import new_figure

    fig = new_figure((5.5, 3.8))
    ax = fig.subplots()
    ax.plot([lo, hi], [0, 1])
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, lo, hi)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    x0, x1 = ax.get_xlim()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and x0 <= t.get_position()[0] <= x1]
    texts = [t.get_text() for t in labels]
    assert len(texts) >= 2, texts
    assert all(float(s) > 0 and "$" not in s and "times" not in s for s in texts), texts  # plain numbers
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), texts
