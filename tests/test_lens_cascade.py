"""The cascade monitor (McKenzie et al. 2025): which examples are escalated, how the scores combine, how many
expensive calls are made, and that an informative judge on the uncertain share helps."""

import math

import pytest
import torch

from assay.lenses.cascade import cascade_scores, escalation_order
from assay.stats import auroc


def test_hand_example():
    logits = torch.tensor([3.0, -0.1, 0.2, -4.0, 0.05])
    seen = []

    def judge(idx):
        seen.append(idx.tolist())
        return torch.tensor([0.9, 0.2])

    res = cascade_scores(logits, judge, fraction=0.4)
    assert seen == [[4, 1]]  # |0.05| < |−0.1| are the two least certain
    want = torch.sigmoid(logits.double())
    want[4] = (want[4] + 0.9) / 2
    want[1] = (want[1] + 0.2) / 2
    torch.testing.assert_close(res.scores, want)
    assert res.escalated.tolist() == [False, True, False, False, True] and res.n_calls == 2


def test_call_counts_are_exactly_the_ceiling_of_the_share():
    logits = torch.linspace(-2, 2, 7)
    for fraction in (0.0, 0.1, 1 / 7, 0.3, 0.5, 0.99, 1.0):
        calls = []

        def judge(idx, calls=calls):
            calls.append(len(idx))
            return torch.full((len(idx),), 0.5)

        res = cascade_scores(logits, judge, fraction=fraction)
        want = math.ceil(fraction * 7 - 1e-9)
        assert res.n_calls == want == int(res.escalated.sum()) == sum(calls)
        assert len(calls) == (1 if want else 0)  # one batched call, none at share 0


def test_ties_break_by_index():
    assert escalation_order(torch.tensor([1.0, -0.5, 0.5, 2.0, -1.0])).tolist() == [1, 2, 0, 4, 3]


def test_an_informative_judge_on_the_uncertain_share_raises_auroc():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    probe = (2 * y - 1) * 0.5 + torch.randn(400, generator=g)  # a weak probe
    judge = torch.where(y.bool(), 0.8, 0.2)  # an informative judge
    base = auroc(probe, y)
    aucs = [auroc(cascade_scores(probe, lambda idx: judge[idx], fraction=f).scores, y) for f in (0.2, 0.5, 1.0)]
    # measured: probe alone 0.750; cascade at 0.2 / 0.5 / 1.0: 0.807 / 0.864 / 0.999
    assert aucs[0] > base + 0.05 and aucs[0] < aucs[1] <= aucs[2]


def test_bad_input():
    with pytest.raises(ValueError, match=r"fraction .* must lie in \[0, 1\], got 1.5"):
        cascade_scores(torch.zeros(3), lambda idx: idx, fraction=1.5)
    with pytest.raises(ValueError, match="returned 1 scores for 2 examples"):
        cascade_scores(torch.zeros(3), lambda idx: torch.tensor([0.5]), fraction=0.5)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        cascade_scores(torch.zeros(3), lambda idx: torch.full((len(idx),), 2.0), fraction=1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        cascade_scores(torch.tensor([0.0, float("nan")]), lambda idx: idx, fraction=0.5)
