"""benchmarks/sae_fragility.py's core on a tiny random transformer and a tiny SAE, checked by recomputing
the latents and the KL on the returned perturbation with a forward pass written out by hand."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from assay.models.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")
_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sae_fragility.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sae_fragility", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(bench):
    model = Transformer(TransformerConfig(vocab_size=8, d_model=16, n_heads=2, n_layers=1, context=16),
                        generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    tokens = torch.randint(1, 8, (24, 8), generator=torch.Generator().manual_seed(1))
    acts = bench.site_rows(model, tokens, "blocks.0")
    sae = bench.train_sae("topk", acts, d_sae=32, k=4, steps=30, batch_size=64, seed=0)
    return model, tokens[:12], acts, sae


def by_hand(model, e):
    """The 1-block transformer's site activation and logits at the last position, written out."""
    pos = model.pos_embed(torch.arange(e.shape[1]))
    h = model.blocks[0](e + pos)
    return h[:, -1], model.unembed(model.ln_f(h))[:, -1]


@pytest.mark.parametrize("objective", ["untargeted", "activate"])
def test_world_fragility_success_matches_an_independent_recomputation(bench, setup, objective):
    model, tokens, acts, sae = setup
    kl_bound = 0.05
    res, base, x, latent = bench.world_fragility(model, sae, tokens, "blocks.0", objective=objective, eps_rel=1.0,
                                                 steps=25, kl_bound=kl_bound, acts=acts)
    torch.testing.assert_close(x, model.embed(tokens))
    h0, logits0 = by_hand(model, x)
    h1, logits1 = by_hand(model, res.x_adv)
    kl = F.kl_div(logits1.log_softmax(-1), logits0.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(res.kl, kl, atol=1e-5, rtol=1e-4)
    codes0, codes1 = sae.encode(h0), sae.encode(h1)
    if objective == "untargeted":
        overlap = torch.tensor([len(set(torch.nonzero(a).flatten().tolist()) & set(torch.nonzero(b).flatten().tolist()))
                                / max(1, int((b != 0).sum())) for a, b in zip(codes1, codes0)])
        met = overlap <= 0.5
    else:
        assert (codes0.gather(1, latent[:, None]) == 0).all()  # the chosen latent was off
        met = codes1.gather(1, latent[:, None]).squeeze(1) > 0
    expected = met & (kl <= kl_bound)
    assert expected.any()  # the check below is not vacuous
    assert torch.equal(res.success, expected)
    eps = float(x.flatten(1).norm(dim=1).median())
    assert ((res.x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    row = bench.make_row("t", res.success, res.relative_perturbation, res.kl, kl_bound, base.success)
    assert row.success_rate == pytest.approx(float(expected.float().mean()))
    assert row.max_kl <= kl_bound


def test_row_interval_is_scipys_wilson(bench):
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (31, 32), (64, 64)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        success = torch.arange(n) < k
        row = bench.make_row("t", success, torch.ones(n), torch.zeros(n), 1.0, torch.zeros(n, dtype=torch.bool))
        assert row.ci_low == pytest.approx(ci.low, abs=1e-12) and row.ci_high == pytest.approx(ci.high, abs=1e-12)
