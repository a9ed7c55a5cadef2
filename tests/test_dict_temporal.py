"""Temporal SAE against a naive per-token loop of its equations; causality, masks, folding, training, metrics."""

import dataclasses
import math

import pytest
import torch
from test_store import Tiny
from test_store_sequences import DOC_LENGTHS, cut_windows

from assay.dictionaries.temporal import TemporalConfig, TemporalSAE, train_temporal_sae
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
from assay.evaluate.temporal import mean_tortuosity, predictable_share, tortuosity
from assay.store import SequenceReader, write_store

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TemporalConfig(d_in=8, d_sae=16, k=3, n_heads=2, d_attn=6, context=3, seed=1)


def trained_like(cfg=CFG, seed=0):
    """A temporal SAE with every parameter moved off its init (so biases and the scale matter)."""
    sae = TemporalSAE(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        sae.input_scale.fill_(1.7)
    return sae


def naive(sae, x, mask):
    """The module docstring's equations, one token and one head at a time: recon, z_p, z_n [B, T, ·]."""
    cfg = sae.cfg
    n, H, k = cfg.d_sae, cfg.n_heads, cfg.k
    dh, g = cfg.attn_width // H, n // H
    D, b, s = sae.W_dec, sae.b_dec, sae.input_scale

    def topk_relu(v):
        vals, idx = v.relu().topk(k)
        return torch.zeros(n, dtype=v.dtype).scatter(0, idx, vals)

    recon, zps, zns = [], [], []
    for bi in range(x.shape[0]):
        xc = x[bi] * s - b
        context_code = (lambda v: v.relu()) if cfg.dense_context else topk_relu
        u = [context_code(sae.lam * xc[t] @ D.T) for t in range(x.shape[1])]
        for t in range(x.shape[1]):
            slots = [0] + [j for j in range(1, t + 1)
                           if bool(mask[bi, j - 1]) and (cfg.context is None or j > t - cfg.context)]
            ctx = [torch.zeros(n, dtype=x.dtype) if j == 0 else u[j - 1] for j in slots]
            z_hat = torch.zeros(n, dtype=x.dtype)
            for h in range(H):
                qk = slice(h * dh, (h + 1) * dh)
                q = u[t] @ sae.W_q[:, qk] + sae.b_q[qk]
                logits = torch.stack([q @ (c @ sae.W_k[:, qk] + sae.b_k[qk]) / math.sqrt(dh) for c in ctx])
                a = logits.softmax(0)
                lat = torch.zeros(n, dtype=x.dtype)
                lat[h * g:(h + 1) * g] = 1
                z_hat = z_hat + sum(aj * c * lat for aj, c in zip(a, ctx))
            pred = z_hat @ D
            z_p = (pred @ xc[t]) / (pred.norm() + 1e-6) ** 2 * z_hat
            z_n = topk_relu(sae.lam * (xc[t] - z_p @ D) @ D.T)
            recon.append(((z_p + z_n) @ D + b) / s)
            zps.append(z_p)
            zns.append(z_n)
    shape = (*x.shape[:2], -1)
    return torch.stack(recon).view(shape), torch.stack(zps).view(shape), torch.stack(zns).view(shape)


def windows(seed=0, B=3, T=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 8, generator=g, dtype=torch.float64) + 0.5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    mask[1, 4:] = False  # a short document: padding
    mask[2, 2] = False
    return x, mask


@pytest.mark.parametrize("dense_context", [False, True])
def test_forward_codes_and_gradients_match_the_naive_loop(dense_context):
    sae = trained_like(dataclasses.replace(CFG, dense_context=dense_context))
    x, mask = windows()
    ref_recon, ref_p, ref_n = naive(sae, x, mask)
    c = sae.codes(x, mask)
    torch.testing.assert_close(c.recon[mask], ref_recon[mask], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c.predictable[mask], ref_p[mask], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c.novel[mask], ref_n[mask], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(c.recon, c.predictable_recon + c.novel_recon + sae.b_dec / 1.7)
    assert (c.novel != 0).sum(-1).max() <= CFG.k
    # ẑ mixes at most `context` past codes: k-sparse ones reach at most context·k latents, dense ones more
    assert ((c.predicted != 0).sum(-1).max() > CFG.k * CFG.context) == dense_context
    out = sae(x, mask=mask)
    assert out.recon.shape == (int(mask.sum()), 8) and out.codes.values.shape == (int(mask.sum()), CFG.k)
    out.loss.backward()
    fast = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    ((naive(sae, x, mask)[0][mask] - x[mask]).pow(2).sum(-1).mean()).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_the_predictable_code_reads_only_the_past_within_the_context():
    sae = trained_like()
    x, mask = windows()
    mask[:] = True
    base = sae.codes(x, mask)
    y = x.clone()
    y[:, 4] += 3.0  # change token 4
    moved = sae.codes(y, mask)
    torch.testing.assert_close(moved.predictable[:, :5 - 1], base.predictable[:, :4], rtol=0, atol=0)  # the past
    torch.testing.assert_close(moved.recon[:, :4], base.recon[:, :4], rtol=0, atol=0)
    assert not torch.allclose(moved.predictable[:, 5], base.predictable[:, 5])  # the next token sees it
    # context = 3 past tokens: token 4 is out of reach from t ≥ 4 + 3 + 1 = 8 (windows of 10)
    x, y = torch.randn(2, 10, 8, dtype=torch.float64), None
    y = x.clone()
    y[:, 4] += 3.0
    a, b = sae.codes(x).predictable, sae.codes(y).predictable
    torch.testing.assert_close(a[:, 8:], b[:, 8:], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7], b[:, 7])
    assert torch.equal(sae.codes(x).attention[..., 0, 1:], torch.zeros(2, 2, 9, dtype=torch.float64))  # t=0: only the empty slot


def test_masked_tokens_do_not_leak():
    sae = trained_like()
    x, mask = windows()
    y = x.clone()
    y[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8, dtype=torch.float64)  # BOS-like outliers, padding junk
    torch.testing.assert_close(sae.codes(y, mask).recon[mask], sae.codes(x, mask).recon[mask], rtol=1e-12, atol=1e-12)
    assert sae(y, mask=mask).loss.item() == pytest.approx(sae(x, mask=mask).loss.item(), rel=1e-12)


def test_folding_the_input_scale_keeps_the_codes():
    sae = trained_like()
    x, mask = windows()
    before = sae.codes(3.0 * x, mask)
    sae.fold_input_scale(3.0)
    after = sae.codes(x, mask)
    torch.testing.assert_close(after.predictable, before.predictable)
    torch.testing.assert_close(after.novel, before.novel)
    torch.testing.assert_close(after.recon, before.recon / 3.0)
    torch.testing.assert_close(sae.decode(sae.encode(x[0])), sae.codes(x[:1]).recon[0])  # Lens view, one window


def test_windows_shorter_than_the_context_are_refused(tmp_path):
    sae = TemporalSAE(dataclasses.replace(CFG, context=9))
    with pytest.raises(ValueError, match=r"windows of 8 positions are shorter than the temporal SAE's context of 9"):
        sae(torch.randn(2, 8, 8))
    win = cut_windows(DOC_LENGTHS)  # windows of 8
    write_store(tmp_path / "s", Tiny(d=8).eval(), ["layers.0"], win, batch_size=4, shard_rows=32)
    reader = SequenceReader.open(tmp_path / "s")
    with pytest.raises(ValueError, match="re-cache the store with a larger --context-length"):
        train_temporal_sae(sae, SAETrainConfig(steps=2), reader, "layers.0", batch_size=2)
    with pytest.raises(ValueError, match="encodes whole windows"):
        sae.encode_codes(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"reads windows \[batch, pos, d=8\]"):
        sae(torch.randn(4, 8))


def test_the_forward_pass_runs_under_bfloat16_autocast():
    sae = trained_like().float()
    x, mask = windows()
    x = x.float()
    full = sae(x, mask=mask).loss.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x, mask=mask)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and float(out.loss.detach()) == pytest.approx(float(full), rel=0.1)
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == torch.float32 for p in sae.parameters())


def test_training_on_sequence_batches_learns_and_resumes_bit_identically(tmp_path):
    win = cut_windows(DOC_LENGTHS * 3, seed=1)
    write_store(tmp_path / "s", Tiny(d=8).eval(), ["layers.0"], win, batch_size=8, shard_rows=64)
    reader = SequenceReader.open(tmp_path / "s")
    cfg = SAETrainConfig(steps=40, warmup_steps=4, lr=3e-3)
    build = dict(d_in=8, d_sae=32, k=4, n_heads=2)
    sae, res = train_temporal_sae(TemporalSAE(TemporalConfig(**build)), cfg, reader, "layers.0", batch_size=6, seed=2)
    assert res.steps == 40 and res.input_scale != 1.0
    x = reader.read_windows("layers.0", range(reader.n_windows))
    untrained_fvu = TemporalSAE(TemporalConfig(**build))(x.acts * res.input_scale, mask=x.mask).rec_loss.item()
    var = x.acts[x.mask].var(0, correction=0).sum().item() * res.input_scale**2
    fvu = sae(x.acts, mask=x.mask).rec_loss.item() * res.input_scale**2 / var
    assert fvu < 0.7 * untrained_fvu / var  # measured: FVU 0.43 after 40 steps, 0.80 untrained
    interrupted = SAETrainer(TemporalSAE(TemporalConfig(**build)), cfg)
    it = reader.batches("layers.0", batch_size=6, seed=2, epochs=99)
    for _ in range(17):
        interrupted.train_step(next(it))
    interrupted.save_checkpoint(tmp_path / "mid")
    ck = tmp_path / "mid"
    resumed, _ = train_temporal_sae(TemporalSAE(TemporalConfig(**build)), cfg, reader, "layers.0", batch_size=6,
                                    seed=2, checkpoint=ck)
    for (name, a), b in zip(sae.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_metric_closed_forms():
    p = torch.zeros(1, 2, 2)
    p[..., 0] = 3.0
    nv = torch.zeros(1, 2, 2)
    nv[..., 1] = 4.0
    assert predictable_share(p, nv) == pytest.approx(9 / 25)
    assert predictable_share(p, nv, torch.tensor([[True, False]])) == pytest.approx(9 / 25)
    square = torch.tensor([[[0.0, 0], [1, 0], [1, 1], [0, 1]]])
    line = torch.tensor([[[0.0, 0], [5, 5], [1, 1], [2, 2]]])
    assert tortuosity(square).tolist() == pytest.approx([3.0])
    assert tortuosity(line, torch.tensor([[True, False, True, True]])).tolist() == pytest.approx([1.0])
    both = torch.cat([square, torch.zeros(1, 4, 2)])  # the second window stays put: no chord
    assert math.isnan(tortuosity(both)[1]) and mean_tortuosity(both) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"mask must be \[batch, pos\]"):
        tortuosity(square, torch.ones(4, dtype=torch.bool))


def test_training_with_a_dense_context_code_lowers_the_loss(tmp_path):
    win = cut_windows(DOC_LENGTHS * 2, seed=3)
    write_store(tmp_path / "s", Tiny(d=8).eval(), ["layers.0"], win, batch_size=8, shard_rows=64)
    reader = SequenceReader.open(tmp_path / "s")
    build = TemporalConfig(d_in=8, d_sae=32, k=4, n_heads=2, dense_context=True)
    x = reader.read_windows("layers.0", range(reader.n_windows))
    sae, res = train_temporal_sae(TemporalSAE(build), SAETrainConfig(steps=30, warmup_steps=3, lr=3e-3), reader,
                                  "layers.0", batch_size=6, seed=2)
    untrained = TemporalSAE(build)(x.acts * res.input_scale, mask=x.mask).rec_loss.item()
    trained = sae(x.acts, mask=x.mask).rec_loss.item() * res.input_scale**2
    assert sae.cfg.dense_context and res.steps == 30 and trained < 0.7 * untrained  # measured: 0.54×
