"""RandEC, GreedyEC and GradEC on toy filters with known behaviour (Kumar et al. 2024)."""

import math

import pytest
import torch

from assay.safety.certificate import EraseConfig, erase_and_check
from assay.safety.empirical import GradConfig, GreedyConfig, grad_ec, greedy_ec, rand_ec
from assay.safety.erase import erased_subsequences
from tests.safety_toys import BagFilter, ToyFilter


def test_randec_full_ratio_is_erase_and_check():
    for prompt in [(1, 2, 3, 3), (1, 2, 0, 3), (0, 0, 1, 1)]:
        cfg = EraseConfig(mode="suffix", d=3)
        a = rand_ec(prompt, ToyFilter(), cfg, sampling_ratio=1.0, generator=torch.Generator().manual_seed(0))
        assert a.harmful == erase_and_check(prompt, ToyFilter(), cfg).harmful and not a.certified


def test_randec_catch_rate_is_the_sampled_fraction():
    """Prompt (1, 2, 3, 0, 4) in infusion mode, d = 2: 1 + 5 + 10 = 16 sequences; the harmful ones are
    exactly those that erase the 3 and keep 1, 2 adjacent: erase {2}, {2,3}, {2,4} → 3 of 15. With
    m = ⌈0.2·15⌉ = 3 sampled, P(miss) = C(12,3)/C(15,3) = 220/455, so P(catch) = 235/455 = 0.516."""
    prompt, cfg = (1, 2, 3, 0, 4), EraseConfig(mode="infusion", d=2)
    seqs = list(erased_subsequences(prompt, "infusion", 2))
    assert len(seqs) == 16 and sum(ToyFilter.verdict(s) for s in seqs) == 3
    caught = [rand_ec(prompt, ToyFilter(), cfg, sampling_ratio=0.2, generator=torch.Generator().manual_seed(s)).harmful
              for s in range(600)]
    rate, expected = sum(caught) / 600, 1 - math.comb(12, 3) / math.comb(15, 3)
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / 600)
    c0 = rand_ec(prompt, ToyFilter(), cfg, sampling_ratio=0.2, generator=torch.Generator().manual_seed(7))
    c1 = rand_ec(prompt, ToyFilter(), cfg, sampling_ratio=0.2, generator=torch.Generator().manual_seed(7))
    assert c0 == c1 and c0.planned_calls == 4


def test_greedy_erases_the_most_suppressing_token_first():
    """Bag of words, prompt logit -4 + Σw: greedy erases negative-weight tokens, most negative first, and
    flags the prompt at the first step where the logit crosses 0 — a closed form."""
    w = torch.tensor([0.0, 2.0, 2.0, -3.0, -1.0, -0.5])
    flt = BagFilter(w, b=-1.0)
    prompt = (1, 2, 5, 4, 3, 0)  # logit = -1 + 4 - 0.5 - 1 - 3 = -1.5; erase 3 -> 1.5 > 0
    cert = greedy_ec(prompt, flt, GreedyConfig(n_iters=5))
    assert cert.harmful and cert.witness == (1, 2, 5, 4, 0)
    assert cert.n_calls == flt.calls == 1 + 6
    flt2 = BagFilter(w, b=-4.0)  # logit -4.5: needs -3, -1 and -0.5 erased -> 0.0 is not > 0; never harmful
    cert2 = greedy_ec(prompt, flt2, GreedyConfig(n_iters=6))
    assert not cert2.harmful and cert2.n_calls == flt2.calls == 1 + 6 + 5 + 4 + 3 + 2 + 1
    flt3 = BagFilter(w, b=-3.6)  # -3.6+4-4.5=-4.1; -> -1.1, -0.1, +0.4 after three erasures
    cert3 = greedy_ec(prompt, flt3, GreedyConfig(n_iters=6))
    assert cert3.harmful and cert3.witness == (1, 2, 0) and cert3.n_calls == 1 + 6 + 5 + 4


def test_greedy_catches_the_toy_suffix_attack():
    assert greedy_ec((1, 2, 3), ToyFilter()).witness == (1, 2)
    assert not ToyFilter.verdict((1, 2, 3))


def test_gradec_erases_like_greedy_on_a_bag_of_words():
    """With one SGD step from equal mask logits, the mask moves by -lr·∂loss/∂m ∝ w[x_t]: the most negative
    weight is erased first — the same choice as GreedyEC, for any weights."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(8, generator=g)
        flt = BagFilter(w, b=float(-w.abs().sum() / 4))
        prompt = tuple(torch.randperm(8, generator=g)[:6].tolist())
        greedy = greedy_ec(prompt, flt, GreedyConfig(n_iters=6))
        grad = grad_ec(prompt, flt, GradConfig(n_iters=6, opt_steps=1))
        assert grad.harmful == greedy.harmful and grad.witness == greedy.witness
        if grad.harmful:
            assert grad.n_calls == 1 + (len(prompt) - len(grad.witness))  # one call per erasure


def test_gradec_needs_gradients():
    with pytest.raises(TypeError, match="differentiable"):
        grad_ec((1, 2), ToyFilter())
