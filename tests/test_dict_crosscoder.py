"""Crosscoders (Lindsey et al. 2024) and model diffing (Minder et al. 2025): the per-source decoder-norm loss
against a hand computation, folding, the spec's check values, Latent Scaling against a direct least-squares
fit, and the ground truth of diffing — a tiny model and a copy with one rule changed (after token FLIP the
next token is NEW), planted as an exact residual edit: a crosscoder finds latents exclusive to the changed
model that fire exactly where the rule applies (the world's label) and whose decoder is the edit, nothing
exclusive to the unchanged model carries it, and two identical models give no exclusive latent; and the same
rule learned by fine-tuning (a copy of a converged base model fine-tuned on the world with the rule): latents
exclusive to the fine-tuned model detect the rule's positions, and the same fine-tuning without the rule gives
none (docs/dictionaries.md, "Crosscoders")."""

import copy

import pytest
import torch
from torch import nn

from assay.dictionaries.crosscoder import crosscoder_batches, source_scales
from assay.dictionaries.model_diff import (
    delta_norms,
    diff_latents,
    latent_scaling,
    relative_norms,
    scaling_beta,
)
from assay.dictionaries.registry import build_sae, load_sae, save_sae
from assay.dictionaries.trainer import SAETrainConfig, train_saes
from assay.models.transformer import Transformer, TransformerConfig
from assay.stats import auroc

pytestmark = pytest.mark.usefixtures("one_thread")

V, T, FLIP, NEW = 17, 12, 5, 11


def test_loss_is_reconstruction_plus_l1_of_per_source_decoder_norms():
    cc = build_sae("crosscoder", d_in=6, d_sae=4, n_sources=2, l1_coef=0.5, seed=1)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    out = cc(x)
    W_enc, b_enc = cc.W_enc.detach(), cc.b_enc.detach()
    f = (x @ W_enc + b_enc).relu()
    dec = cc.W_dec.detach().view(4, 2, 3)  # [n, M, d]
    recon = torch.cat([f @ dec[:, m] for m in range(2)], 1) + cc.b_dec.detach()
    rec = sum(((x[:, 3 * m:3 * (m + 1)] - recon[:, 3 * m:3 * (m + 1)]) ** 2).sum(-1).mean() for m in range(2))
    pen = 0.5 * (f * (dec[:, 0].norm(dim=-1) + dec[:, 1].norm(dim=-1))).sum(-1).mean()
    torch.testing.assert_close(out.loss.detach(), rec + pen)


def test_topk_crosscoder_ranks_by_the_decoder_scaled_code_and_keeps_raw_values():
    cc = build_sae("crosscoder", d_in=4, d_sae=3, n_sources=2, activation="topk", k=1)
    with torch.no_grad():
        cc.W_enc.copy_(torch.tensor([[3.0, 2.0, 1.0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
        cc.b_enc.zero_()
        cc.W_dec.copy_(torch.tensor([[0.1, 0, 0.1, 0], [1.0, 0, 1.0, 0], [0.5, 0, 0, 0]]))  # Σ_m‖d^m‖ = .2, 2, .5
    z = cc.encode(torch.tensor([[1.0, 0, 0, 0]]))
    # pre = (3, 2, 1); scaled = (0.6, 4.0, 0.5): latent 1 wins although latent 0 has the largest code
    torch.testing.assert_close(z, torch.tensor([[0.0, 2.0, 0.0]]))
    assert cc(torch.tensor([[1.0, 0, 0, 0]])).sparsity_loss.item() == 0.0


def test_spec_check_values_and_fold():
    cc = build_sae("crosscoder", d_in=4, d_sae=3, n_sources=2)
    with torch.no_grad():
        cc.W_dec.zero_()
        cc.W_dec[0] = torch.tensor([3.0, 0, 0, 1.0])  # ‖d^A‖ = 3, ‖d^B‖ = 1
    assert relative_norms(cc)[0].item() == pytest.approx(0.25)
    assert delta_norms(cc)[0].item() == pytest.approx(1 / 6, abs=1e-6)
    beta = scaling_beta(torch.tensor([1.0, 0]), torch.tensor([1.0, 2, 0]), torch.tensor([[2.0, 1], [3, 0], [5, 5]]))
    assert beta.item() == pytest.approx(1.6)
    cc = build_sae("crosscoder", d_in=6, d_sae=5, n_sources=3, seed=2)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([2.0, 0.5, 4.0])
    scaled = x * s.repeat_interleave(2)
    z, rec = cc.encode(scaled), cc.decode(cc.encode(scaled))
    cc.fold_source_scales(s)
    torch.testing.assert_close(cc.encode(x), z)
    torch.testing.assert_close(cc.decode(cc.encode(x)), rec / s.repeat_interleave(2))


def test_latent_scaling_equals_a_direct_least_squares_fit():
    cc = build_sae("crosscoder", d_in=8, d_sae=6, n_sources=2, seed=3)
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(4)).abs()
    ls = latent_scaling(cc, [x[:20], x[20:]], torch.tensor([1, 4]))
    z, x_hat = cc.encode(x), cc.decode(cc.encode(x))
    dec = cc.source_decoders().detach()
    for col, j in enumerate([1, 4]):
        d, f = dec[1, j], z[:, j]
        for m in range(2):
            a, a_hat = x[:, 4 * m:4 * (m + 1)], x_hat[:, 4 * m:4 * (m + 1)]
            for target, beta in ((a_hat, ls.beta_r), (a - a_hat + f[:, None] * dec[m, j], ls.beta_eps)):
                # direct: argmin_β Σ_n ‖β f_n d − y_n‖²
                direct = torch.linalg.lstsq((f[:, None] * d).reshape(-1, 1).double(),
                                            target.reshape(-1, 1).double()).solution.item()
                assert beta[m, col].item() == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_cross_layer_sources_are_one_pass_of_one_model_concatenated():
    from assay.hooks import capture

    model = Transformer(TransformerConfig(vocab_size=V, n_layers=2, d_model=8, context=T),
                        generator=torch.Generator().manual_seed(0)).eval()
    tok = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    scales = torch.tensor([2.0, 0.5])
    got = next(crosscoder_batches([model], [(0, "blocks.0"), (0, "blocks.1")], [tok], batch_size=3 * (T - 1),
                                  scales=scales))
    with torch.no_grad(), capture(model, ["blocks.0", "blocks.1"]) as cap:
        model(tok)
    want = torch.cat([2.0 * cap["blocks.0"][:, 1:], 0.5 * cap["blocks.1"][:, 1:]], -1).reshape(-1, 16)
    torch.testing.assert_close(got, want)  # BOS dropped, layer-major per row, per-source scales applied


def test_sources_of_different_widths_need_a_projection():
    a = Transformer(TransformerConfig(vocab_size=V, n_layers=1, d_model=8, context=T))
    b = Transformer(TransformerConfig(vocab_size=V, n_layers=1, d_model=12, context=T))
    tok = torch.randint(0, V, (4, T))
    with pytest.raises(ValueError, match="different widths"):
        next(crosscoder_batches([a, b], [(0, "blocks.0"), (1, "blocks.0")], [tok], batch_size=8))
    proj = {1: torch.randn(12, 8)}
    got = next(crosscoder_batches([a, b], [(0, "blocks.0"), (1, "blocks.0")], [tok], batch_size=8, projections=proj))
    assert got.shape == (8, 16)


def _tokens(n, seed, *, rule=False):
    """The base world: t → (3t + 1) mod V with probability 0.5, else a random token (BOS 0 first). With ``rule``, the
    token two after a FLIP is NEW: the model predicting position t + 1 at t must see that the token at t − 1 is
    FLIP (:func:`rule_applies`), which the base world never asks for — a new feature, not a changed use of an
    existing one."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.empty(n, T, dtype=torch.long)
    tok[:, 0] = 0
    tok[:, 1] = torch.randint(1, V, (n,), generator=g)
    for t in range(2, T):
        nxt = (3 * tok[:, t - 1] + 1) % V
        tok[:, t] = torch.where(torch.rand(n, generator=g) < 0.5, nxt, torch.randint(1, V, (n,), generator=g))
        if rule and t >= 3:
            tok[:, t] = torch.where(tok[:, t - 2] == FLIP, torch.full_like(tok[:, t], NEW), tok[:, t])
    return tok


def rule_applies(tokens):
    """The changed rule's label per position: the previous token is FLIP."""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    out[:, 1:] = tokens[:, :-1] == FLIP
    return out


class PlantedRule(nn.Module):
    """The base model with one rule changed: after a FLIP, the next token is NEW — planted by adding
    ``v`` (the unembedding direction of NEW) to the residual stream after block 0 wherever the previous token
    is FLIP. The residual difference to the base model is exactly v at those positions and 0 elsewhere."""

    def __init__(self, base, strength):
        super().__init__()
        self.base = copy.deepcopy(base)
        self.blocks = self.base.blocks  # the same site names as the base model
        w = self.base.unembed.weight[NEW].detach()
        self.register_buffer("v", strength * w / w.norm())
        self._tokens = None
        self.blocks[0].register_forward_hook(lambda m, a, out: out + rule_applies(self._tokens)[..., None] * self.v)

    def forward(self, tokens):
        self._tokens = tokens
        return self.base(tokens)


@pytest.fixture(scope="module")
def models():
    cfg = TransformerConfig(vocab_size=V, n_layers=1, n_heads=2, d_model=16, context=T)
    base = Transformer(cfg, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(base.parameters(), lr=1e-2)
    data = _tokens(256, 1)
    for _ in range(150):
        loss = nn.functional.cross_entropy(base(data)[:, :-1].reshape(-1, V), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    base.eval()
    return base, PlantedRule(base, strength=3.0).eval()


def _diff(A, B, tmp_path=None, **kw):
    """Train a 2-model crosscoder on blocks.0 of A and B (sources normalised) and sort its latents; returns
    the diff, the AUROC of each robust B-only / A-only latent for the rule label, and the crosscoder."""
    sources = [(0, "blocks.0"), (1, "blocks.0")]
    probe = next(crosscoder_batches([A, B], sources, [_tokens(256, 3)], batch_size=2000))
    scales = source_scales(probe.view(-1, 2, 16))

    def batches(start):
        return crosscoder_batches([A, B], sources, (_tokens(64, 100 + s) for s in range(start, 10**6)),
                                  batch_size=256, scales=scales)

    cc, _ = train_saes(build_sae("crosscoder", d_in=32, d_sae=64, n_sources=2, **kw),
                       SAETrainConfig(steps=500, lr=3e-3, warmup_steps=25), batches)
    if tmp_path is not None:
        cc = load_sae(save_sae(tmp_path / "cc", cc))
    ev = _tokens(128, 999)
    x = next(crosscoder_batches([A, B], sources, [ev], batch_size=128 * (T - 1), scales=scales))
    label = rule_applies(ev)[:, 1:].reshape(-1)  # the world's label at every non-BOS position
    z = cc.encode(x)
    diff = diff_latents(cc, [x], alive=(z > 0).any(0))
    b_auc = {i: auroc(z[:, i], label) for i in diff.b_only.tolist()}
    a_auc = [auroc(z[:, i], label) for i in diff.a_only.tolist()]
    return diff, b_auc, a_auc, cc


@pytest.mark.parametrize("kw", [{}, {"activation": "topk", "k": 4}], ids=["relu", "topk"])
def test_crosscoder_finds_a_latent_exclusive_to_the_model_with_the_changed_rule(models, tmp_path, kw):
    A, B = models
    with torch.no_grad():
        ev = _tokens(64, 5)
        at = rule_applies(ev)[:, 1:]
        assert (B(ev).argmax(-1)[:, 1:][at] == NEW).float().mean() > 0.9  # the changed rule is real in B ...
        assert (A(ev).argmax(-1)[:, 1:][at] == NEW).float().mean() < 0.2  # ... and not in A
    diff, b_auc, a_auc, cc = _diff(A, B, tmp_path, **kw)
    # measured (relu): 9 latents B-only by norm, 2 of them rejected by Latent Scaling (ν above 0.2: A holds their
    # direction too); the 7 robust ones all detect the rule's positions with AUROC 1.00; no A-only latent.
    # (topk, k = 4, ranked by decoder-scaled code): exactly one B-only latent, AUROC 1.00; no A-only latent
    assert len(b_auc) > 0 and min(b_auc.values()) > 0.95, (b_auc, diff.b_only_by_norm.tolist())
    v_dir = B.v / B.v.norm()
    dec_b = cc.source_decoders()[1, list(b_auc)].detach()
    cos = torch.nn.functional.cosine_similarity(dec_b, v_dir[None], dim=-1)
    assert cos.max() > 0.9, cos  # a model-B decoder is the planted change itself (measured: all 7 at 0.99)
    assert max(a_auc, default=0.5) < 0.75, a_auc  # nothing exclusive to the unchanged model carries the rule
    # control: two identical models give no robust exclusive latent that carries the rule (measured: none at all)
    _, b_ctrl, _, _ = _diff(A, PlantedRule(A, strength=0.0).eval(), **kw)
    assert max(b_ctrl.values(), default=0.5) < 0.75, b_ctrl


def _fit(model, steps, lr, *, rule, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for s in range(steps):
        data = _tokens(256, seed + s, rule=rule)
        loss = nn.functional.cross_entropy(model(data)[:, :-1].reshape(-1, V), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fine_tuned():
    """A base model trained to convergence on fresh draws of the base world (1000 steps), a copy fine-tuned for
    300 steps on the world with the rule, and the control: the same fine-tuning on the base world."""
    cfg = TransformerConfig(vocab_size=V, n_layers=1, n_heads=2, d_model=16, context=T)
    base = _fit(Transformer(cfg, generator=torch.Generator().manual_seed(0)), 1000, 3e-3, rule=False, seed=1)
    tuned = _fit(copy.deepcopy(base), 300, 1e-3, rule=True, seed=5000)
    control = _fit(copy.deepcopy(base), 300, 1e-3, rule=False, seed=5000)
    return base, tuned, control


def test_crosscoder_finds_latents_exclusive_to_a_model_fine_tuned_on_a_changed_rule(fine_tuned):
    A, B, C = fine_tuned
    with torch.no_grad():
        ev = _tokens(64, 5)
        at = rule_applies(ev)[:, 1:]
        assert (B(ev).argmax(-1)[:, 1:][at] == NEW).float().mean() > 0.9  # fine-tuning learned the rule ...
        for M in (A, C):
            assert (M(ev).argmax(-1)[:, 1:][at] == NEW).float().mean() < 0.2  # ... the others did not
    diff, b_auc, a_auc, _ = _diff(A, B)
    # measured (base seeds 0-3): 6-11 robust B-only latents, the best at AUROC 0.976-0.984 for the rule's positions,
    # 4/6-8/11 of them above 0.8 (the rest 0.63-0.74); A-only latents: 1-2, each "the current token is 16" (AUROC
    # 1.0 for that; 0.79 for the rule, since the token after a FLIP is 16 half the time), 0.49 for another
    assert b_auc and max(b_auc.values()) > 0.95, b_auc
    assert sum(v > 0.8 for v in b_auc.values()) >= len(b_auc) / 2, b_auc
    assert max(a_auc, default=0.5) < 0.85, a_auc
    # control: the same fine-tuning without the rule gives no exclusive latent carrying it (measured: none at all)
    _, b_ctrl, _, _ = _diff(A, C)
    assert max(b_ctrl.values(), default=0.5) < 0.75, b_ctrl
