"""Dictionary metrics against hand-computed cases (specs/dictionaries.md §3, §5)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assay.evaluate.geometry import (
    babel,
    coherence,
    effective_rank,
    hungarian_match,
    ood_score,
    stability,
    stable_rank,
)
from assay.evaluate.reconstruction import ReconstructionAccumulator, fvu, reconstruction_metrics
from assay.evaluate.recovery import feature_recovery
from assay.evaluate.sparsity import sparsity_metrics
from assay.evaluate.spliced import recovered, spliced_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_explained_variance_checks():
    x = torch.tensor([[2.0, 0], [0, 4]])
    m = reconstruction_metrics(x, torch.tensor([[2.0, 1], [0, 3]]))
    assert m.explained_variance == pytest.approx(0.8)  # about zero would give 0.9 (SAELens#665)
    assert m.mse == pytest.approx(1.0)
    # constant offset: correct EV 0.8; the var(x − x̂) form would say 1.0
    assert reconstruction_metrics(x, x + torch.tensor([1.0, 0])).explained_variance == pytest.approx(0.8)
    x = torch.tensor([[1.0, 0], [3, 0], [2, 2]])
    xh = torch.tensor([[1.5, 0], [3, 0], [2, 1]])
    assert reconstruction_metrics(x, xh).explained_variance == pytest.approx(0.732143, abs=1e-6)
    assert 1 - fvu(x, xh).item() == pytest.approx(0.732143, abs=1e-6)
    mu = x.mean(0).expand_as(x)
    assert reconstruction_metrics(x, mu).explained_variance == pytest.approx(0.0, abs=1e-12)
    assert reconstruction_metrics(x, x).explained_variance == 1.0


def test_streaming_is_ratio_of_global_sums_and_mse_is_batch_size_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g) + 3
    xh = x + 0.3 * torch.randn(100, 5, generator=g)
    whole = reconstruction_metrics(x, xh)
    acc = ReconstructionAccumulator()
    for i in range(0, 100, 7):  # uneven batches; per-batch means differ from the global mean
        acc.update(x[i : i + 7], xh[i : i + 7])
    streamed = acc.result()
    for a, b in zip(whole, streamed):
        assert a == pytest.approx(b, rel=1e-9)
    twice = reconstruction_metrics(torch.cat([x, x]), torch.cat([xh, xh]))
    assert twice.mse == pytest.approx(whole.mse)  # SAELens#711
    other = [(x[i] - xh[i]).pow(2).sum() / (x[i] - x.mean(0)).pow(2).sum() for i in range(100)]
    assert whole.fvu != pytest.approx(torch.stack(other).mean().item(), rel=1e-3)


def test_cosine_l2_ratio_relative_bias():
    x = torch.tensor([[1.0, 0], [0, 2]])
    xh = torch.tensor([[0.5, 0], [0, 1]])
    m = reconstruction_metrics(x, xh)
    assert m.cosine == pytest.approx(1.0)
    assert m.l2_ratio == pytest.approx(0.5)
    assert m.relative_bias == pytest.approx((0.25 + 1) / (0.5 + 2))


def test_sparsity_hand_case():
    z = torch.tensor([[1.0, 0, 2], [0, 0, -3]])
    m = sparsity_metrics(z, dense_threshold=0.6)
    assert (m.l0, m.l1) == (1.5, 3.0)
    assert m.dead_fraction == pytest.approx(1 / 3)
    assert m.dense_fraction == pytest.approx(1 / 3)
    torch.testing.assert_close(m.firing_rate, torch.tensor([0.5, 0, 1], dtype=torch.float64))


def test_geometry_checks():
    D = torch.eye(3)
    D2 = torch.tensor([[0.0, -1, 0], [0.6, 0, 0.8], [1, 0, 0]])
    assert stability(D, D2) == pytest.approx(0.933333, abs=1e-6)
    assert stability(D, D2, signed=True) == pytest.approx(1 / 3, abs=1e-6)  # (0,−1,0) counts −1
    assert stability(D, torch.cat([D2, torch.ones(2, 3)])) == pytest.approx(0.933333, abs=1e-6)
    assert ood_score(torch.tensor([[1.0, 0], [0.6, 0.8]]), torch.eye(2)) == pytest.approx(0.1)
    three = torch.tensor([[1.0, 0], [0.6, 0.8], [0, 1]])
    assert stable_rank(three) == pytest.approx(1.5, abs=1e-6)
    assert effective_rank(three) == pytest.approx(1.970634, abs=1e-6)
    # atoms of unequal norm (as an RA-SAE's are): the ranks see D's own spectrum σ = (3, 1), not the
    # unit-normalised atoms' (σ = (1, 1), which would give 2 and 2)
    sv = torch.diag(torch.tensor([3.0, 1.0]))
    assert stable_rank(sv) == pytest.approx(1.111111, abs=1e-6)
    assert effective_rank(sv) == pytest.approx(1.754765, abs=1e-6)
    p = torch.tensor([0.75, 0.25])
    assert math.exp(-(p * p.log()).sum().item()) == pytest.approx(1.754765, abs=1e-6)
    assert coherence(three) == pytest.approx(0.8)
    assert babel(three, 2) == pytest.approx(1.4)


def test_feature_recovery_flipped_direction_is_unrecovered_when_signed():
    G = torch.eye(2)
    D = torch.tensor([[-1.0, 0], [0, 1], [0, -1]])  # the first planted direction is only present flipped
    for m in (feature_recovery(D, G), feature_recovery(D, G, signed=True)):  # signed is the default
        torch.testing.assert_close(m.matched_cosine, torch.tensor([0.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(m.best_cosine, torch.tensor([0.0, 1.0], dtype=torch.float64))
        assert (m.mcc, m.fraction_recovered, m.mean_max_cosine) == (0.5, 0.5, 0.5)
    u = feature_recovery(D, G, signed=False)
    torch.testing.assert_close(u.matched_cosine, torch.ones(2, dtype=torch.float64))
    assert (u.mcc, u.fraction_recovered, u.mean_max_cosine) == (1.0, 1.0, 1.0)
    # hungarian_match has the same flag and default: signed, G_0 is not paired with its flip −G_0
    _, cols, c = hungarian_match(G, D)
    assert cols.tolist() == [2, 1]
    _, cols, c = hungarian_match(G, D, signed=False)
    assert cols.tolist() == [0, 1]
    torch.testing.assert_close(c, torch.tensor([-1.0, 1.0], dtype=torch.float64))  # cosines keep their sign
    # importance weights w = (3, 1): weighted means
    w = feature_recovery(D, G, weights=torch.tensor([3.0, 1.0]))
    assert (w.mcc, w.fraction_recovered, w.mean_max_cosine) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="weights"):
        feature_recovery(D, G, weights=torch.ones(3))


@pytest.mark.parametrize("signed", [True, False])
def test_feature_recovery_matches_brute_force(signed):
    g = torch.Generator().manual_seed(0)
    G, D = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    cos = F.normalize(G.double(), dim=1) @ F.normalize(D.double(), dim=1).t()
    score = cos if signed else cos.abs()
    best = max(itertools.permutations(range(5), 3), key=lambda p: sum(score[i, j].item() for i, j in enumerate(p)))
    want = torch.stack([score[i, j] for i, j in enumerate(best)])
    m = feature_recovery(D, G, signed=signed)
    torch.testing.assert_close(m.matched_cosine, want)
    torch.testing.assert_close(m.best_cosine, score.max(1).values)


def test_feature_recovery_hand_case():
    G = torch.eye(3)
    D = torch.tensor([[0.0, 2, 0], [0.6, 0, 0.8], [3, 0, 0], [0, 0, -1]])
    m = feature_recovery(D, G, threshold=0.9)
    torch.testing.assert_close(m.matched_cosine, torch.tensor([1.0, 1.0, 0.8], dtype=torch.float64))
    assert m.mcc == pytest.approx(2.8 / 3)
    assert m.fraction_recovered == pytest.approx(2 / 3)
    assert m.mean_max_cosine == pytest.approx(2.8 / 3)
    torch.testing.assert_close(m.best_cosine, torch.tensor([1.0, 1.0, 0.8], dtype=torch.float64))
    assert feature_recovery(D, G, signed=False).fraction_recovered == 1.0  # (0,0,−1) counts under |cos|
    with pytest.raises(ValueError, match="dimension"):
        feature_recovery(D, torch.eye(4))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(7, 4)
        self.mid = nn.Linear(4, 4)
        self.unembed = nn.Linear(4, 7)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, t):
        return self.unembed(torch.tanh(self.mid(self.embed(t))))


def test_spliced_metrics_hand_case():
    assert recovered(3.0, 3.5, 8.0) == pytest.approx(0.9)
    model = _Tiny().eval()
    tokens = torch.tensor([[0, 3, 1, 5], [2, 2, 6, 4]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)  # last token of row 2 is padding

    def manual_ce(h_fn):
        h = torch.tanh(h_fn(model.mid(model.embed(tokens))))
        logits = model.unembed(h)[:, :-1]
        ce = F.cross_entropy(logits.reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none").view(2, 3)
        return ce[mask[:, 1:]].mean().item(), logits.log_softmax(-1)

    half = lambda h: 0.5 * h  # noqa: E731
    with torch.no_grad():
        ce_clean, lp_clean = manual_ce(lambda h: h)
        ce_half, lp_half = manual_ce(half)
        ce_zero, lp_zero = manual_ce(torch.zeros_like)
    m = spliced_metrics(model, "mid", [(tokens, mask)], half)
    assert m.n_tokens == 5
    assert m.ce_clean == pytest.approx(ce_clean, rel=1e-5)
    assert m.ce_sae == pytest.approx(ce_half, rel=1e-5)
    assert m.ce_zero == pytest.approx(ce_zero, rel=1e-5)
    assert m.ce_recovered == pytest.approx((ce_zero - ce_half) / (ce_zero - ce_clean), rel=1e-5)
    kl = (lp_clean.exp() * (lp_clean - lp_half)).sum(-1)[mask[:, 1:]].mean().item()
    assert m.kl_sae == pytest.approx(kl, rel=1e-4)
    perfect = spliced_metrics(model, "mid", [(tokens, mask)], lambda h: h)
    assert perfect.ce_recovered == pytest.approx(1.0) and perfect.kl_sae == pytest.approx(0.0, abs=1e-6)
    # "with error term" splicing x̂ + (x − x̂) reproduces clean logits exactly
    err = spliced_metrics(model, "mid", [(tokens, mask)], lambda h: half(h) + (h - half(h)))
    assert err.ce_sae == pytest.approx(m.ce_clean, rel=1e-6)


def test_spliced_keep_first_leaves_the_bos_position_clean():
    model = _Tiny().eval()
    tokens = torch.tensor([[0, 3, 1, 5], [2, 2, 6, 4]])

    def manual_ce(h_fn):  # h_fn applied at positions ≥ 1 only
        h = model.mid(model.embed(tokens))
        h = torch.cat([h[:, :1], h_fn(h[:, 1:])], 1)
        logits = model.unembed(torch.tanh(h))[:, :-1]
        return F.cross_entropy(logits.reshape(-1, 7), tokens[:, 1:].reshape(-1)).item()

    half = lambda h: 0.5 * h  # noqa: E731
    with torch.no_grad():
        want_sae, want_zero = manual_ce(half), manual_ce(torch.zeros_like)
    m = spliced_metrics(model, "mid", [tokens], half, keep_first=1)
    assert m.ce_sae == pytest.approx(want_sae, rel=1e-5)
    assert m.ce_zero == pytest.approx(want_zero, rel=1e-5)
    full = spliced_metrics(model, "mid", [tokens], half)
    assert full.ce_zero != pytest.approx(m.ce_zero)  # position 0's prediction changed without keep_first
    with pytest.raises(ValueError, match="keep_first must be >= 0"):
        spliced_metrics(model, "mid", [tokens], half, keep_first=-1)
