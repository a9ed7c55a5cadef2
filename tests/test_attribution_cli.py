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
                                   "--out", str(out)])
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


def test_occlusion_patches_on_images(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "load", _tiny_image)
    out = tmp_path / "occ"
    res = CliRunner().invoke(app, ["attribute", "--images", "coffee", "--method", "occlusion", "--patch", "56",
                                   "--target", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    v = load_artifact(out / "attribution", kind="attribution").tensors["attribution"]["values"][0]
    # 4×4 windows of 56×56 over all channels: the map is constant on each window
    assert torch.unique(v[:, :56, :56]).numel() == 1 and torch.unique(v).numel() <= 16
    assert json.loads((out / "results.json").read_text())["rows"][0]["target"] == 2


class CharTokenizer:
    def __call__(self, text, return_tensors="pt"):
        ids = torch.tensor([[ord(c) % 61 for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def convert_ids_to_tokens(self, ids):
        return [f"<{i}>" for i in ids]


def test_prompt_token_scores(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")

    def tiny_llama(name, **kw):
        cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(cfg).eval()
        return offline.LoadedModel(model, CharTokenizer(), name, ("model.layers.0", "model.layers.1"))

    monkeypatch.setattr(offline, "load", tiny_llama)
    out = tmp_path / "txt"
    res = CliRunner().invoke(app, ["attribute", "--model", "smollm2-135m", "--prompt", "hi there", "--method",
                                   "input_x_gradient", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == len("hi there") and all(isinstance(r["score"], float) for r in rows)
    assert res.output.count("<") >= len("hi there")


def test_bad_flags():
    r = CliRunner().invoke(app, ["attribute", "--steps", "0"])
    assert r.exit_code != 0 and "steps must be" in r.output
    r = CliRunner().invoke(app, ["attribute", "--method", "shap"])
    assert r.exit_code != 0
