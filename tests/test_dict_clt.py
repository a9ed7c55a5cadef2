"""Cross-layer transcoders (Ameisen et al. 2025) against independent references: a naive per-layer loop of the
CLT equations, per-layer transcoders (a window-0 CLT holding their weights is them), a planted cross-layer
write that training must recover (and a window-0 CLT cannot), forbidden decoder blocks held at exactly 0 by
the trainer, and clear errors for configs and sites that do not fit."""

import pytest
import torch

from assay.config import ConfigError
from assay.dictionaries.clt import clt_batches, is_clt
from assay.dictionaries.registry import build_sae, load_sae, save_sae
from assay.dictionaries.topk import topk_codes
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer, train_saes
from assay.dictionaries.transcoder import is_transcoder
from assay.hooks import SiteError
from assay.models.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

L, D, N = 3, 4, 5


def _randomised(clt, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        if is_clt(clt):
            clt.mask_decoder(clt.W_dec)
    return clt


def test_shapes_masks_and_bad_configs():
    clt = build_sae("topk_clt", d_in=L * D, d_out=L * D, d_sae=L * N, k=2, n_layers=L).double()
    assert is_clt(clt) and is_transcoder(clt)
    assert tuple(clt.W_enc.shape) == (L, D, N) and tuple(clt.W_dec.shape) == (L * N, L * D)
    for src in range(L):
        for tgt in range(L):
            assert bool((clt.decoder(src, tgt) == 0).all()) == (tgt < src), (src, tgt)
    x = torch.randn(7, L * D, dtype=torch.float64)
    assert tuple(clt.transcode(x).shape) == (7, L * D)
    z = clt.encode(x).view(7, L, N)
    assert int((z != 0).sum(-1).max()) <= 2  # TopK per layer, not over all L·n features
    w1 = build_sae("topk_clt", d_in=L * D, d_out=L * D, d_sae=L * N, k=2, n_layers=L, window=1)
    assert w1.write_mask().tolist() == [[True, True, False], [False, True, True], [False, False, True]]
    assert float(w1.decoder(0, 2).detach().abs().sum()) == 0.0
    with pytest.raises(ConfigError, match="n_layers=3"):
        build_sae("topk_clt", d_in=10, d_out=12, d_sae=15, k=2, n_layers=3)
    with pytest.raises(ConfigError, match="skip"):
        build_sae("topk_clt", d_in=12, d_out=12, d_sae=15, k=2, n_layers=3, skip=True)
    with pytest.raises(ConfigError, match="features per layer"):
        build_sae("topk_clt", d_in=12, d_out=12, d_sae=15, k=6, n_layers=3)
    with pytest.raises(ConfigError, match="window"):
        build_sae("jumprelu_clt", d_in=12, d_out=12, d_sae=15, n_layers=3, window=-1)
    with pytest.raises(ConfigError, match="block encoder"):  # resampling rewrites W_enc[:, i] columns
        SAETrainer(clt, SAETrainConfig(steps=10, resample_every=5))


@pytest.mark.parametrize("arch", ["topk_clt", "jumprelu_clt"])
def test_transcode_equals_a_naive_loop_over_the_clt_equations(arch, tmp_path):
    kw = {"k": 2} if arch == "topk_clt" else {}
    clt = _randomised(build_sae(arch, d_in=L * D, d_out=L * D, d_sae=L * N, n_layers=L, **kw).double())
    x = torch.randn(9, L * D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = x.view(9, L, D)
    acts = []
    for layer in range(L):
        pre = r[:, layer] @ clt.W_enc[layer] + clt.b_enc[layer * N:(layer + 1) * N]
        if arch == "topk_clt":
            acts.append(topk_codes(pre, 2))
        else:
            acts.append(pre * (pre > clt.threshold[layer * N:(layer + 1) * N]))
    want = torch.cat([sum(acts[src] @ clt.W_dec[src * N:(src + 1) * N, tgt * D:(tgt + 1) * D]
                          for src in range(tgt + 1)) + clt.b_dec[tgt * D:(tgt + 1) * D] for tgt in range(L)], 1)
    torch.testing.assert_close(clt.transcode(x), want, rtol=0, atol=1e-12)
    back = load_sae(save_sae(tmp_path / "clt", clt)).double()  # loads as float32: compare at that precision
    assert type(back) is type(clt) and back.cfg == clt.cfg
    torch.testing.assert_close(back.transcode(x), want, rtol=1e-4, atol=1e-4)


def test_a_window_zero_clt_is_the_per_layer_transcoders():
    tcs = [_randomised(build_sae("topk_transcoder", d_in=D, d_out=D, d_sae=N, k=2).double(), seed=i)
           for i in range(L)]
    clt = build_sae("topk_clt", d_in=L * D, d_out=L * D, d_sae=L * N, k=2, n_layers=L, window=0).double()
    with torch.no_grad():
        for i, tc in enumerate(tcs):
            clt.W_enc[i].copy_(tc.W_enc)
            clt.b_enc[i * N:(i + 1) * N].copy_(tc.b_enc)
            clt.decoder(i, i).copy_(tc.W_dec)
            clt.b_dec[i * D:(i + 1) * D].copy_(tc.b_dec)
    x = torch.randn(11, L * D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = torch.cat([tc.transcode(x[:, i * D:(i + 1) * D]) for i, tc in enumerate(tcs)], 1)
    torch.testing.assert_close(clt.transcode(x), want, rtol=0, atol=1e-12)


def _planted_cross_layer(n=4000, seed=0):
    """Layer 0 reads one of 4 features (one-hot direction × magnitude) and the model writes it twice: A at MLP 0
    and B at MLP 1. Layer 1's residual is unrelated noise, so only a cross-layer write from layer-0 features can
    rebuild MLP 1's output."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 4, (n,), generator=g)
    mag = 0.5 + torch.rand(n, 1, generator=g)
    E, A, B = (torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1) for _ in range(3))
    r0, r1 = E[c] * mag, torch.randn(n, 6, generator=g)
    return torch.cat([r0, r1], 1), torch.cat([A[c] * mag, B[c] * mag], 1), B


def test_training_recovers_a_planted_cross_layer_write():
    x, y, B = _planted_cross_layer()
    g = torch.Generator().manual_seed(5)

    def pairs(start):
        for _ in range(start, 400):
            i = torch.randint(0, x.shape[0], (128,), generator=g)
            yield x[i], y[i]

    cfg = SAETrainConfig(steps=400, lr=1e-2, warmup_steps=20)
    fvu1 = {}
    for window in (None, 0):
        clt = build_sae("topk_clt", d_in=12, d_out=12, d_sae=16, k=1, n_layers=2, window=window)
        clt, _ = train_saes(clt, cfg, pairs)
        with torch.no_grad():
            y1, y1_hat = y[:, 6:], clt.transcode(x)[:, 6:]
            fvu1[window] = float((y1 - y1_hat).pow(2).sum() / (y1 - y1.mean(0)).pow(2).sum())
            assert float(clt.decoder(1, 0).abs().max()) == 0.0  # forbidden block untouched by training
        if window is None:
            z = clt.encode(x)[:, :8]
            live = (z > 0).any(0)
            rows = torch.nn.functional.normalize(clt.decoder(0, 1).detach()[live], dim=-1)
            best = (rows @ B.T).abs().max(0).values  # every planted B row found by a live layer-0 feature
    # measured: FVU of MLP 1 0.0005 (full CLT) vs 0.998 (window 0); best |cos| to B ≥ 0.9994
    assert fvu1[None] < 0.05 and fvu1[0] > 0.9
    assert float(best.min()) > 0.95


def test_jumprelu_transcoders_without_a_decoder_bias_still_record_the_input_norm():
    # the JumpReLU threshold is measured in the first batch's input norm; holding b_dec at 0 used to skip that
    tc = build_sae("jumprelu_transcoder", d_in=4, d_out=3, d_sae=8, decoder_bias=False)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 5
    tc.init_from_batch(x, torch.randn(64, 3))
    assert float(tc.input_norm) == pytest.approx(float(x.norm(dim=-1).mean()))
    assert float(tc.b_dec.abs().max()) == 0.0


def test_clt_batches_capture_every_layer_in_one_pass_and_refuse_sites_that_do_not_fit():
    model = Transformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_mlp=16, context=6))
    clt = build_sae("topk_clt", d_in=16, d_out=16, d_sae=8, k=1, n_layers=2)
    ins, outs = ["blocks.0.ln2", "blocks.1.ln2"], ["blocks.0.mlp", "blocks.1.mlp"]
    tokens = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(0))
    x, y = next(clt_batches(model, clt, ins, outs, [tokens], batch_size=10))
    from assay.hooks import capture

    with torch.no_grad(), capture(model, ins + outs) as cap:
        model(tokens)
    rows = [cap[s][:, 1:].reshape(-1, 8)[:10] for s in ins + outs]
    torch.testing.assert_close(x, torch.cat(rows[:2], 1))
    torch.testing.assert_close(y, torch.cat(rows[2:], 1))
    with pytest.raises(ValueError, match="spans 2 layers"):
        next(clt_batches(model, clt, ins[:1], outs, [tokens], batch_size=10))
    with pytest.raises(SiteError):
        next(clt_batches(model, clt, ["blocks.0.ln2", "blocks.7.ln2"], outs, [tokens], batch_size=10))
    wide = build_sae("topk_clt", d_in=24, d_out=24, d_sae=8, k=1, n_layers=2)
    with pytest.raises(ValueError, match="input width 16"):
        next(clt_batches(model, wide, ins, outs, [tokens], batch_size=10))
