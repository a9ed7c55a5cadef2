"""The one-pass suffix-mode probe filter: identical verdicts to the (d + 1)-pass erase-and-check."""

import pytest
import torch

from assay.lenses.probes import LinearProbe
from assay.safety.certificate import EraseConfig, erase_and_check
from assay.safety.probe_filter import ProbeFilter, fit_probe_filter, one_pass_suffix_check

SITE = "model.layers.1"


def random_filter(llama, seed=0, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, generator=g)
    return ProbeFilter(llama, SITE, LinearProbe(w, torch.tensor(bias), "random"), start_ids=[1], context_length=60)


def test_prefix_logits_equal_separate_passes(llama):
    flt = random_filter(llama)
    toks = torch.randint(2, 64, (15,), generator=torch.Generator().manual_seed(1)).tolist()
    one = flt.prefix_logits(toks)
    each = torch.cat([flt.harmful_logit([toks[:tau]]) for tau in range(16)])  # 16 passes, one per prefix
    batched = flt.harmful_logit([toks[:tau] for tau in range(16)])  # right-padded batch
    torch.testing.assert_close(one, each, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, each, atol=1e-5, rtol=0)


def test_one_pass_verdicts_identical_to_d_plus_one_passes(llama):
    g = torch.Generator().manual_seed(2)
    agree = harmful = 0
    for trial in range(30):
        L = int(torch.randint(3, 25, (), generator=g))
        toks = torch.randint(2, 64, (L,), generator=g).tolist()
        # bias near the prefix scores' median, so verdicts vary between prefixes and prompts
        median = float(random_filter(llama, seed=trial % 5).prefix_logits(toks).median())
        flt = random_filter(llama, seed=trial % 5, bias=-median + float(torch.randn((), generator=g)))
        d = int(torch.randint(0, 30, (), generator=g))
        cfg = EraseConfig(mode="suffix", d=d, batch_size=1)
        fast, slow = one_pass_suffix_check(toks, flt, cfg), erase_and_check(toks, flt, cfg)
        assert (fast.harmful, fast.witness, fast.planned_calls) == (slow.harmful, slow.witness, slow.planned_calls)
        agree += 1
        harmful += fast.harmful
    assert agree == 30 and 5 <= harmful <= 25  # both verdicts occur


def test_one_pass_rejects_other_modes_and_long_prompts(llama):
    flt = random_filter(llama)
    with pytest.raises(ValueError, match="suffix mode only"):
        one_pass_suffix_check([3, 4], flt, EraseConfig(mode="infusion", d=1))
    with pytest.raises(ValueError, match="61 tokens .* at most 60"):
        one_pass_suffix_check([3] * 61, flt, EraseConfig(mode="suffix", d=1))


def test_fit_probe_filter_learns_a_planted_trigger(llama):
    """Harmful = ends in token 7 (planted; a random 2-layer model carries an earlier trigger too weakly for a
    probe: measured 0.67-0.71 accuracy); the fitted probe separates fresh prompts."""
    g = torch.Generator().manual_seed(3)

    def prompts(n, trigger):
        out = []
        for _ in range(n):
            t = torch.randint(10, 64, (10,), generator=g).tolist()
            if trigger:
                t[-1] = 7
            out.append(t)
        return out

    flt = fit_probe_filter(llama, SITE, prompts(40, True), prompts(40, False), start_ids=[1], d=4, C=1.0)
    test_h, test_s = prompts(30, True), prompts(30, False)
    acc = ((flt.harmful_probability(test_h) > 0.5).float().mean() + (flt.harmful_probability(test_s) <= 0.5).float().mean()) / 2
    assert acc > 0.8, acc
