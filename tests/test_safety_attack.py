"""GCG suffix attack on a bag-of-words filter, whose optimal suffix is known in closed form."""

import pytest
import torch

from assay.safety.attack import GCGConfig, gcg_suffix
from tests.safety_toys import BagFilter


def test_gcg_finds_the_closed_form_optimum():
    """logit = b + Σ w[x]: the best suffix repeats argmin w; top_k = 1 proposes exactly that token, and each
    step's best single swap fixes one more position, so ℓ steps reach the optimum."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, generator=g)
    flt = BagFilter(w, b=3.0)
    allowed = torch.arange(10, 40)
    best_token = int(allowed[w[allowed].argmin()])
    suffix = gcg_suffix((1, 2, 3), 5, flt, allowed=allowed, config=GCGConfig(steps=5, top_k=1, n_candidates=64),
                        generator=g)
    assert suffix == (best_token,) * 5
    assert gcg_suffix((1, 2), 0, flt, allowed=allowed) == ()


def test_gcg_lowers_the_harmful_probability_and_is_seeded():
    w = torch.randn(40, generator=torch.Generator().manual_seed(1))
    flt = BagFilter(w, b=2.0)
    allowed = torch.arange(40)
    a = gcg_suffix((1, 2), 4, flt, allowed=allowed, config=GCGConfig(steps=3), generator=torch.Generator().manual_seed(5))
    b = gcg_suffix((1, 2), 4, flt, allowed=allowed, config=GCGConfig(steps=3), generator=torch.Generator().manual_seed(5))
    start = gcg_suffix((1, 2), 4, flt, allowed=allowed, config=GCGConfig(steps=0),
                       generator=torch.Generator().manual_seed(5))  # the random initial suffix
    assert a == b and flt.logit((1, 2) + a) < flt.logit((1, 2) + start)
    with pytest.raises(ValueError, match="length"):
        gcg_suffix((1,), -1, flt, allowed=allowed)
