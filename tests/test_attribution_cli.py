"""``assay attribute`` end to end with tiny stand-in models (the real EfficientNet/SmolLM2 are too slow
for the test budget): PNG heatmaps for skimage photos, per-token scores for a prompt, bad flags."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from assay.artifact import load_artifact
from assay.cli import app
from assay.models import offline
from assay.report import read_section


class TinyImageNet(nn.Module):
    """Any-size RGB → 5 classes: conv, ReLU, global average pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _tiny_image(name, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyImageNet().eval()
    return offline.LoadedModel(net, None, name, ("conv",))


def test_image_heatmaps_and_ig_completeness(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "load", _tiny_image)
    out = tmp_path / "attr"
    res = CliRunner().invoke(app, ["attribute", "--images", "chelsea", "--images", "coffee", "--steps", "16",
                                   "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert [r["image"] for r in results["rows"]] == ["chelsea", "coffee"]
    for r in results["rows"]:
        png = out / f"heatmap_{r['image']}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert abs(r["completeness_gap"]) < 1e-3 * max(1.0, abs(r["output"]))  # IG: Σφ ≈ f(x) − f(0)
    art = load_artifact(out / "attribution", kind="attribution")
    assert art.tensors["attribution"]["values"].shape == (2, 3, 224, 224)
    assert "chelsea" in res.output and "wrote" in res.output
    # the report section: one heatmap per photo and the completeness gap per photo
    sec = read_section(out)
    assert "integrated_gradients" in sec.title
    assert [p.path.name for p in sec.plots] == ["heatmap_chelsea.png", "heatmap_coffee.png"]
    (table,) = sec.tables
    assert [r[0] for r in table.rows] == ["chelsea", "coffee"]
    assert any("f_t(0)" in c for c in table.columns)
    assert [r[-1] for r in table.rows] == [r["completeness_gap"] for r in results["rows"]]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_occlusion_patches_on_images(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "load", _tiny_image)
    out = tmp_path / "occ"
    res = CliRunner().invoke(app, ["attribute", "--images", "coffee", "--method", "occlusion", "--patch", "56",
                                   "--target", "2", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    v = load_artifact(out / "attribution", kind="attribution").tensors["attribution"]["values"][0]
    # 4×4 windows of 56×56 over all channels: the map is constant on each window
    assert torch.unique(v[:, :56, :56]).numel() == 1 and torch.unique(v).numel() <= 16
    assert json.loads((out / "results.json").read_text())["rows"][0]["target"] == 2


def test_runs_get_their_own_folder_and_leave_no_stale_heatmaps(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "load", _tiny_image)
    monkeypatch.chdir(tmp_path)
    args = ["attribute", "--method", "gradient", "--target", "1"]
    assert CliRunner().invoke(app, [*args, "--images", "coffee", "--images", "chelsea"]).exit_code == 0
    out = tmp_path / "runs" / "attribute" / "efficientnet-lite0"  # the default: one folder per model
    assert sorted(p.name for p in out.glob("heatmap_*.png")) == ["heatmap_chelsea.png", "heatmap_coffee.png"]
    assert CliRunner().invoke(app, [*args, "--images", "astronaut"]).exit_code == 0
    assert [p.name for p in out.glob("heatmap_*.png")] == ["heatmap_astronaut.png"]  # the earlier photos are gone
    assert [r["image"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["astronaut"]


@pytest.mark.parametrize("method", ["fullgrad", "gradcam"])
def test_fullgrad_and_gradcam_maps_on_images(tmp_path, monkeypatch, method):
    """The two methods outside the engine run from the command line and save the library function's map."""
    from skimage import data

    from assay.attribution.fullgrad import FullGradConfig, fullgrad
    from assay.attribution.gradcam import GradCamConfig, gradcam
    from assay.models.offline_vision import preprocess_image

    monkeypatch.setattr(offline, "load", _tiny_image)
    out = tmp_path / method
    res = CliRunner().invoke(app, ["attribute", "--images", "coffee", "--method", method, "--target", "1",
                                   "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    saved = load_artifact(out / "attribution", kind="attribution").tensors["attribution"]["values"]
    net, x = _tiny_image("stand-in").model, preprocess_image(data.coffee())[None]
    # the command explains the class's log-softmax by default
    if method == "fullgrad":
        ref = fullgrad(net, x, 1, config=FullGradConfig(output="log_softmax")).saliency
    else:  # the default layer is the model's last layer site ("conv" here)
        ref = gradcam(net, x, 1, config=GradCamConfig(layer="conv", output="log_softmax")).values
    assert saved.shape == (1, 224, 224) and ref.abs().sum() > 0
    torch.testing.assert_close(saved, ref.detach())
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["target"] == 1 and (out / "heatmap_coffee.png").read_bytes()[:4] == b"\x89PNG"
    with torch.no_grad():
        f_t = float(net(x).log_softmax(-1)[0, 1])
    if method == "fullgrad":  # FullGrad reports f_t(x); Grad-CAM does not
        assert row["output"] == pytest.approx(f_t, rel=1e-5)
    else:
        assert row["output"] != row["output"]
    assert method in read_section(out).title


class CharTokenizer:
    """One token per character (ids = ord(c) mod 61); tokens spelled like HTML tags to test escaping."""

    eos_token_id = 2
    pad_token_id = None

    def __call__(self, text, return_tensors="pt"):
        ids = torch.tensor([[ord(c) % 61 for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def convert_ids_to_tokens(self, ids):
        return [f"<b{i}>" for i in ids]


@pytest.fixture
def tiny_lm(llama, monkeypatch):
    monkeypatch.setattr(offline, "load", lambda name, **kw: offline.LoadedModel(
        llama, CharTokenizer(), name, ("model.layers.0", "model.layers.1")))
    return llama


def test_prompt_token_scores_and_section(tmp_path, tiny_lm):
    out = tmp_path / "txt"
    res = CliRunner().invoke(app, ["attribute", "--model", "smollm2-135m", "--prompt", "hi there", "--method",
                                   "input_x_gradient", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert len(rows) == len("hi there") and all(isinstance(r["score"], float) for r in rows)
    assert res.output.count("<b") >= len("hi there")
    sec = read_section(out)
    explained, scores = sec.tables
    assert [r[1] for r in scores.rows] == [f"<b{ord(c) % 61}>" for c in "hi there"]
    assert [r[2] for r in scores.rows] == [r["score"] for r in rows]
    assert explained.rows[0][0] == results["target"] and explained.rows[0][4] == results["completeness_gap"]
    html = (out / "report.html").read_text()
    assert "&lt;b40&gt;" in html and "<b40>" not in html  # tokens are text: escaped, never markup


@pytest.mark.parametrize("kind", ["zero", "pad", "mean"])
def test_text_baseline_flag(tmp_path, tiny_lm, kind):
    """--text-baseline sets f_t(baseline) to the model's output at the chosen reference embedding."""
    out = tmp_path / kind
    res = CliRunner().invoke(app, ["attribute", "--model", "smollm2-135m", "--prompt", "hey", "--steps", "8",
                                   "--text-baseline", kind, "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    E = tiny_lm.get_input_embeddings().weight.detach()
    ref = {"zero": torch.zeros_like(E[0]), "pad": E[CharTokenizer.eos_token_id], "mean": E.mean(0)}[kind]
    with torch.no_grad():  # the command explains the next token's log-softmax by default
        f_b = tiny_lm(inputs_embeds=ref.expand(1, 3, -1)).logits[0, -1].log_softmax(-1)[r["target"]]
        f_x = tiny_lm(input_ids=torch.tensor([[ord(c) % 61 for c in "hey"]])).logits[0, -1].log_softmax(-1)[r["target"]]
    assert r["baseline_output"] == pytest.approx(float(f_b), abs=1e-5)
    total = sum(row["score"] for row in r["rows"])
    assert r["completeness_gap"] == pytest.approx(total - float(f_x - f_b), abs=1e-5)
    if kind != "zero":  # IG: Σφ = f(x) − f(b) up to the 8-node quadrature error; from the zero embedding
        # RMSNorm's scale invariance puts a sharp step near α = 0 (on this model 8 nodes miss 44% of Δf of the
        # log-softmax; pad and mean: |gap| < 0.05% of Δf)
        assert abs(r["completeness_gap"]) < 0.05 * abs(float(f_x - f_b)) + 1e-3
    assert read_section(out).tables[0].rows[0][-1] == kind
    # an incomplete IG (the zero baseline here: 44% of Δf missing) is flagged in the terminal and as the
    # report's first note; a complete one is not
    incomplete = abs(r["completeness_gap"]) > 0.1 * abs(float(f_x - f_b))
    assert incomplete == (kind == "zero")
    assert ("UNTRUSTWORTHY" in res.output) == incomplete
    assert read_section(out).notes[0].startswith("UNTRUSTWORTHY") == incomplete


def test_raw_logits_of_a_classifier_are_explained_with_a_warning(tmp_path, monkeypatch):
    """The photo classifier's class is explained as log-softmax by default, silently; --output logit explains
    the raw logit (the library function's map for output='logit') and warns in the terminal and as the
    report's first note (Srinivas & Fleuret 2021). MiniLM's pooled unit has no softmax: logit, no warning."""
    from skimage import data

    from assay.attribution import InputXGradientConfig, input_x_gradient
    from assay.bench.real_model_attribution import AttributeCommand, explained_output, logit_warning
    from assay.models.offline_vision import preprocess_image

    monkeypatch.setattr(offline, "load", _tiny_image)
    net, x = _tiny_image("stand-in").model, preprocess_image(data.coffee())[None]
    maps = {}
    for flag in ([], ["--output", "logit"]):
        out = tmp_path / ("logit" if flag else "default")
        res = CliRunner().invoke(app, ["attribute", "--images", "coffee", "--method", "input_x_gradient", "--target",
                                       "2", *flag, "--out-dir", str(out)])
        assert res.exit_code == 0, res.output
        assert ("RAW LOGITS" in res.output) == bool(flag)
        notes = read_section(out).notes
        assert notes[0].startswith("RAW LOGITS") == bool(flag)
        assert any(f"output {'logit' if flag else 'log_softmax (the default)'}" in n for n in notes)
        maps[bool(flag)] = load_artifact(out / "attribution", kind="attribution").tensors["attribution"]["values"]
    for raw, kind in ((False, "log_softmax"), (True, "logit")):
        ref = input_x_gradient(net, x, 2, config=InputXGradientConfig(output=kind)).values
        torch.testing.assert_close(maps[raw], ref.detach())
    assert not torch.allclose(maps[False], maps[True])  # the two outputs are explained differently
    enc = AttributeCommand(model="minilm-l6")
    assert explained_output(enc) == "logit" and logit_warning(enc) is None
    assert explained_output(AttributeCommand(model="smollm2-135m")) == "log_softmax"
    assert logit_warning(AttributeCommand(model="smollm2-135m", output="logit")) is not None
    assert logit_warning(AttributeCommand(output="probability")) is None


def test_bad_flags():
    r = CliRunner().invoke(app, ["attribute", "--steps", "0"])
    assert r.exit_code != 0 and "steps must be" in r.output
    r = CliRunner().invoke(app, ["attribute", "--method", "shap"])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["attribute", "--text-baseline", "blank"])
    assert r.exit_code != 0 and "blank" in r.output
    r = CliRunner().invoke(app, ["attribute", "--model", "smollm2-135m", "--method", "gradcam"])
    assert r.exit_code != 0 and "photos only" in r.output


def test_attribute_rank_writes_the_ranking_section(tmp_path, monkeypatch):
    """``assay attribute-rank``: the attribution bench family (here on the tabular world with a tiny classifier
    trained into a temporary cache) lands in summary.json and in the section, one row per method."""
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rank"
    res = CliRunner().invoke(app, ["attribute-rank", "--methods", "gradient", "--methods", "random", "--worlds",
                                   "tabular:top_k=3", "--options", "n_examples=8", "--options", "n_train=500",
                                   "--options", "epochs=3", "--options", "plots=false", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 runs (2 computed" in res.output
    summary = json.loads((out / "summary.json").read_text())
    (table,) = read_section(out).tables
    assert table.columns[:2] == ["method", "level"] and table.columns[-1] == "gan_test_accuracy"
    assert "faithfulness_correlation" in table.columns and "relevance_mass" in table.columns
    assert sorted(r[0] for r in table.rows) == ["gradient", "random"]
    for row in table.rows:  # each cell is the summary's mean (one seed: no interval)
        for col, cell in zip(table.columns[2:], row[2:]):
            found = [s for s in summary if s["method"] == row[0] and s["metric"] == col]
            if col == "gan_test_accuracy":  # the GAN-test needs images: not run on the tabular world
                assert cell == "–" and not found
                continue
            (s,) = found
            assert cell == f"{s['mean']:.4g}" and s["n"] == 1
    rnd = next(r for r in table.rows if r[0] == "random")
    assert float(rnd[table.columns.index("randomisation_spearman")]) == pytest.approx(1.0)  # ignores the weights
    r = CliRunner().invoke(app, ["attribute-rank", "--methods", "shap", "--out-dir", str(out)])
    assert r.exit_code != 0 and "unknown method 'shap'" in r.output
