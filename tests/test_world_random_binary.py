import pytest
import torch
from scipy.integrate import quad

from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.random_binary import (
    RandomBinaryConfig,
    RandomBinaryWorld,
    bayes_predictive,
    continuation_probability,
    primitive_necklaces,
    sequence_statistics,
)


def _naive_joint(x, concepts, rho, eps):
    """(pattern part, Bernoulli part) of P(x): explicit sum over (concept, phase) and a numerical integral over p."""
    pat = 0.0
    for c in concepts:
        for phi in range(len(c)):
            lik = 1.0
            for t, b in enumerate(x):
                lik *= (1 - eps) if b == int(c[(phi + t) % len(c)]) else eps
            pat += rho / len(concepts) / len(c) * lik
    k = sum(x)
    bern = (1 - rho) * quad(lambda p: p**k * (1 - p) ** (len(x) - k), 0, 1)[0]
    return pat, bern


def test_spec_check_values():
    p1, pp = bayes_predictive(torch.tensor([[0, 1, 1, 0]]), ("011",), pattern_prob=0.5)
    assert abs(pp[0, 3].item() - 0.8) < 1e-12 and abs(1 - p1[0, 3].item() - 0.88) < 1e-12
    assert primitive_necklaces(4) == ("0001", "0011", "0111") and primitive_necklaces(6)[0] == "000001"
    s = sequence_statistics("0110100110")
    assert s == {"mean": 0.5, "alternation": pytest.approx(0.666667, abs=1e-6), "longest_run": 2.0, "gzip_bytes": 28.0}
    s = sequence_statistics("011" * 10)
    assert s["alternation"] == pytest.approx(0.655172, abs=1e-6) and s["gzip_bytes"] == 25.0


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_labels_match_brute_force_bayes(eps):
    w = RandomBinaryWorld(RandomBinaryConfig(seq_len=8, flip_noise=eps, kl_from=4))
    b = w.sample(12, generator=make_generator(3))
    x = (b.targets - 4).tolist()
    for i, row in enumerate(x):
        for t in range(8):
            pat, bern = _naive_joint(row[:t], w.patterns, 0.5, eps)
            pat1, bern1 = _naive_joint(row[:t] + [1], w.patterns, 0.5, eps)
            assert b.labels["p_pattern"][i, t].item() == pytest.approx(pat / (pat + bern), abs=1e-6)
            assert b.labels["bayes_p1"][i, t].item() == pytest.approx((pat1 + bern1) / (pat + bern), abs=1e-6)


def test_sampling_follows_the_sources_and_is_seeded():
    w = RandomBinaryWorld(RandomBinaryConfig(seq_len=32, flip_noise=0.05))
    b = w.sample(4000, generator=make_generator(0))
    assert torch.equal(b.inputs, w.sample(4000, generator=make_generator(0)).inputs)
    src = b.labels["source"].bool()
    assert abs(src.float().mean().item() - 0.5) < 0.03
    x = b.targets - 4
    # concept rows disagree with their (concept, phase) at rate ε; Bernoulli rows have frequency ≈ p
    c, phi = b.labels["pattern"][src], b.labels["phase"][src]
    truth = torch.tensor([[int(w.patterns[ci][(pi + t) % len(w.patterns[ci])]) for t in range(32)]
                          for ci, pi in zip(c.tolist(), phi.tolist())])
    assert abs((truth != x[src]).float().mean().item() - 0.05) < 0.005
    freq, p = x[~src].float().mean(1), b.labels["p"][~src]
    assert (freq - p).abs().mean() < 0.08 and torch.isnan(b.labels["p"][src]).all()
    # the Bayes predictive is calibrated on its own samples
    assert abs(b.labels["bayes_p1"].mean().item() - x.float().mean().item()) < 0.01
    assert registry.make("random_binary", seq_len=24).config.seq_len == 24


def test_continuation_probability_is_the_product_of_next_flip_probabilities():
    x = torch.tensor([[0, 1, 1, 0, 1, 1]])
    p1 = torch.tensor([[0.5, 0.6, 0.7, 0.2, 0.9, 0.8]], dtype=torch.float64)
    q = continuation_probability(p1, x, depth=3)
    assert q.shape == (1, 4)
    assert q[0, 0].item() == pytest.approx(0.5 * 0.6 * 0.7) and q[0, 3].item() == pytest.approx(0.8 * 0.9 * 0.8)


def test_evaluate_scores_bayes_as_kl_zero():
    w = RandomBinaryWorld(RandomBinaryConfig(seq_len=24))
    b = w.sample(64, generator=make_generator(1))
    p = b.labels["bayes_p1"].double().clamp(1e-9, 1 - 1e-9)
    logits = torch.zeros(64, 24, len(w.vocab), dtype=torch.float64)
    logits[..., 5] = (p / (1 - p)).log()
    m = w.evaluate(logits, b)
    assert m["kl_bayes"] < 1e-6 and m["bayes_efficiency"] == pytest.approx(1.0, abs=1e-6)
    assert w.evaluate(torch.zeros_like(logits), b)["kl_bayes"] > 0.05


@pytest.mark.parametrize("kw, match", [
    ({"periods": ()}, "no concept"),
    ({"patterns": ("0101",)}, "repeats"),
    ({"patterns": ("011", "110")}, "rotations"),
    ({"flip_noise": 0.5}, "flip_noise"),
    ({"patterns": ("012",)}, "0s and 1s"),
])
def test_impossible_configs_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        RandomBinaryConfig(**kw)
    assert RandomBinaryConfig(periods=(), pattern_prob=0.0).concepts() == ()  # a pure Bernoulli world is valid
