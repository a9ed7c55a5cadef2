"""Logit lens against the model's own head; tuned lens = logit lens at init, recovers a planted map, round-trips."""

import pytest
import torch
from torch import nn

from assay.artifact import ArtifactError
from assay.hooks import capture
from assay.lenses.logit_lens import UnembedLens, kl_to_final, logit_lens
from assay.lenses.tuned_lens import (
    TunedLens,
    TunedLensConfig,
    fit_tuned_lens,
    load_tuned_lens,
    save_tuned_lens,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SITES = ["model.layers.0", "model.layers.1"]


def test_logit_lens_last_layer_is_the_model(llama):
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    res = logit_lens(llama, SITES, ids)
    torch.testing.assert_close(res.logits[-1], res.final_logits, atol=1e-5, rtol=1e-5)
    assert float(res.kl[-1].abs().max()) < 1e-5 and float(res.top1_agreement[-1]) == 1.0
    with torch.no_grad(), capture(llama, SITES[0]) as c:
        llama(ids)
        manual = llama.lm_head(llama.model.norm(c[SITES[0]]))
    torch.testing.assert_close(res.logits[0], manual)
    assert float(res.kl[0].mean()) > 0


def test_untrained_tuned_lens_equals_logit_lens(llama):
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    lens = TunedLens(TunedLensConfig(d_model=32, sites=tuple(SITES)))
    a = logit_lens(llama, SITES, ids)
    b = logit_lens(llama, SITES, ids, translators=lens)
    assert torch.equal(a.logits, b.logits)


def test_tuned_lens_recovers_planted_translation(tmp_path):
    """Layer activations are a known invertible linear image of the final residual; the tuned lens learns
    to undo it (KL → ~0) where the logit lens cannot."""
    g = torch.Generator().manual_seed(2)
    d, V, N = 8, 20, 2048
    unembed = nn.Linear(d, V, bias=False)
    with torch.no_grad():
        unembed.weight.copy_(torch.randn(V, d, generator=g))
    norm = nn.Identity()
    x = torch.randn(N, d, generator=g)
    M = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)
    h = x @ M.T + 0.5
    final = unembed(x).detach()
    cfg = TunedLensConfig(d_model=d, sites=("layer",), steps=120, batch_tokens=256, lr_scale=4.0)
    lens, losses = fit_tuned_lens([h], final, norm, unembed, cfg)
    with torch.no_grad():
        before = float(kl_to_final(final, unembed(h)).mean())
        after = float(kl_to_final(final, unembed(lens(h, 0))).mean())
    assert losses[0] == pytest.approx(before, rel=0.2)
    assert after < 0.05 * before
    path = save_tuned_lens(tmp_path / "tl", lens)
    back = load_tuned_lens(path)
    assert back.cfg == cfg and torch.equal(back(h, 0), lens(h, 0))
    with pytest.raises(ArtifactError, match="holds"):
        from assay.artifact import load_artifact, save_artifact
        save_artifact(tmp_path / "other", kind="sae.topk", config={}, tensors={"x": torch.zeros(1)})
        load_tuned_lens(tmp_path / "other")
    assert load_artifact(path).kind == "lens.tuned"


def test_unembed_lens_pinv_round_trip():
    W = torch.randn(10, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lens = UnembedLens(W)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(lens.decode(lens.encode(x)), x, atol=1e-12, rtol=0)


def test_tuned_lens_as_lens():
    """Layer ℓ of a tuned lens as an encoder–decoder: at init it is the unembedding lens; trained (planted
    A, b) it encodes as W_U·translator(h) and its pseudo-inverse decoder round-trips."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(10, 4, generator=g, dtype=torch.float64)
    tl = TunedLens(TunedLensConfig(d_model=4, sites=("a", "b"))).double()
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(tl.lens(1, W).encode(x), UnembedLens(W).encode(x), atol=1e-12, rtol=0)
    with torch.no_grad():
        tl.A[1] = 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)
        tl.b[1] = torch.randn(4, generator=g, dtype=torch.float64)
    lens = tl.lens(1, W)
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), tl(x, 1) @ W.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(lens.decode(lens.encode(x)), x, atol=1e-10, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        tl.lens(2, W)
    with pytest.raises(ValueError, match="width 3"):
        lens.encode(torch.randn(2, 3, dtype=torch.float64))


def test_bad_input(llama):
    ids = torch.randint(0, 64, (1, 4))
    with pytest.raises(KeyError, match="no submodule"):
        logit_lens(llama, ["model.layers.5"], ids)
    with pytest.raises(ValueError, match="cannot find"):
        logit_lens(nn.Sequential(nn.Linear(2, 2)), ["0"], torch.randn(1, 2))
    cfg = TunedLensConfig(d_model=4, sites=("a",), steps=1, batch_tokens=2)
    with pytest.raises(ValueError, match="NaN"):
        fit_tuned_lens([torch.full((3, 4), float("nan"))], torch.randn(3, 5), nn.Identity(), nn.Linear(4, 5), cfg)
    with pytest.raises(ValueError, match="expected"):
        fit_tuned_lens([torch.randn(3, 5)], torch.randn(3, 5), nn.Identity(), nn.Linear(4, 5), cfg)


def test_tuned_lens_from_store_tiny_transformer(tmp_path):
    """Train on a store of a tiny transformer's residuals: the last block's store rows through ln_f and
    unembed are the model's logits, and training lowers the first layer's KL below the logit lens's."""
    from assay.lenses.tuned_lens import fit_tuned_lens_from_store
    from assay.models.transformer import Transformer, TransformerConfig
    from assay.store import ActivationStore, write_store

    model = Transformer(TransformerConfig(vocab_size=16, n_layers=2, d_model=16, n_heads=2, context=8),
                        generator=torch.Generator().manual_seed(0)).eval()
    tokens = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(1))
    write_store(tmp_path / "s", model, ["blocks.0", "blocks.1"], tokens, batch_size=8, shard_rows=64)
    store = ActivationStore.open(tmp_path / "s")
    with torch.no_grad():
        logits = model(tokens).reshape(-1, 16)
    torch.testing.assert_close(model.unembed(model.ln_f(store.read("blocks.1", 0, store.n_rows))), logits,
                               atol=1e-5, rtol=1e-5)
    cfg = TunedLensConfig(d_model=16, sites=("blocks.0",), steps=60, batch_tokens=128, lr_scale=4.0)
    lens, losses = fit_tuned_lens_from_store(store, "blocks.1", model.ln_f, model.unembed, cfg)
    h0 = store.read("blocks.0", 0, store.n_rows)
    with torch.no_grad():
        before = float(kl_to_final(logits, model.unembed(model.ln_f(h0))).mean())
        after = float(kl_to_final(logits, model.unembed(model.ln_f(lens(h0, 0)))).mean())
    assert after < 0.8 * before
    assert all(p.requires_grad for p in model.parameters())  # frozen only during training
    with pytest.raises(ValueError, match="no site"):
        fit_tuned_lens_from_store(store, "blocks.5", model.ln_f, model.unembed, cfg)
