"""SAE fragility attack against hand-built ReLU / TopK encoders with a planted null space."""

import pytest
import torch
from torch import nn

from assay.lens import Lens
from assay.robustness.sae_fragility import (
    active_set_overlap,
    fragility_attack,
    random_baseline,
    site_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, no spinning on shared cores

D = 8
OUT = torch.zeros(3, D)
OUT[0, 0], OUT[1, 1], OUT[2, 2] = 2.0, 2.0, 2.0  # the output reads dims 0-2 only


class ReLULens:
    """z = relu(h W_enc + b_enc), W_enc = identity: latent i reads dim i."""

    def __init__(self, bias=-0.5):
        self.W_enc = torch.eye(D)
        self.b_enc = torch.full((D,), bias)
        self.b_dec = torch.zeros(D)

    def encode(self, h):
        return torch.relu((h - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_enc.T + self.b_dec


class TopKLens:
    """Top-2 of h W (no attribute weights: the attack falls back to encode for gradients)."""

    def __init__(self):
        self.W = torch.eye(D)

    def encode(self, h):
        pre = h @ self.W
        v, i = pre.topk(2, dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, torch.relu(v))

    def decode(self, z):
        return z @ self.W.T


def forward(x):  # identity site: h = x; logits read dims 0-2
    return x, x @ OUT.T


X = torch.tensor([[1.0, 0.2, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0],
                  [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])


def test_lenses_satisfy_protocol():
    assert isinstance(ReLULens(), Lens) and isinstance(TopKLens(), Lens)


def test_activate_latent_in_output_null_space_needs_exactly_its_threshold():
    lens = ReLULens(bias=-0.5)
    res = fragility_attack(forward, lens, X, objective="activate", latent=5, eps=2.0, steps=200, step_size=0.01)
    assert res.success.all()
    assert (lens.encode(res.x_adv)[:, 5] > 0).all()
    assert res.kl.abs().max() < 1e-6  # the output never moved
    # the minimal L2 change is 0.5 along dim 5; PGD steps of 0.01 land within one step of it
    torch.testing.assert_close(res.perturbation_norm, torch.full((2,), 0.5), atol=0.011, rtol=0)


def test_kl_bound_blocks_latents_the_output_reads():
    lens = ReLULens(bias=-1.5)  # latent 2 reads dim 2, which the output also reads
    res = fragility_attack(forward, lens, X, objective="activate", latent=2, eps=3.0, steps=100, kl_bound=1e-3)
    assert not res.success.any()
    loose = fragility_attack(forward, lens, X, objective="activate", latent=2, eps=3.0, steps=100, kl_bound=50.0)
    assert loose.success.all()
    free = fragility_attack(forward, lens, X, objective="activate", latent=2, eps=3.0, steps=100, kl_bound=None)
    assert free.success.all() and (free.kl > 1e-3).any()  # no bound: success although the output moved


def test_deactivate_and_untargeted_topk():
    lens = ReLULens(bias=-0.5)
    x = X.clone()
    x[:, 6] = 1.0  # latent 6 fires
    res = fragility_attack(forward, lens, x, objective="deactivate", latent=6, eps=2.0, steps=100)
    assert res.success.all() and (lens.encode(res.x_adv)[:, 6] == 0).all()
    topk = TopKLens()
    x = X.clone()
    x[:, 5] = 1.5
    x[:, 6] = 1.2  # top-2 set {5, 6}, in the output's null space
    res = fragility_attack(forward, topk, x, objective="untargeted", eps=3.0, steps=100, overlap_threshold=0.0)
    assert res.success.all() and (res.overlap == 0).all() and res.kl.max() <= 0.01  # within the KL bound


def test_targeted_matches_another_inputs_code():
    lens = ReLULens(bias=-0.5)
    target = torch.zeros(2, D)
    target[:, 4] = 2.0
    target[:, 7] = 2.0
    res = fragility_attack(forward, lens, X, objective="targeted", target_h=target, eps=4.0, steps=100,
                           overlap_threshold=1.0)
    assert res.success.all()
    assert (active_set_overlap(lens.encode(res.x_adv), lens.encode(target)) == 1).all()


def test_random_baseline_is_weaker_than_the_attack():
    lens = ReLULens(bias=-0.5)
    res = fragility_attack(forward, lens, X, objective="activate", latent=5, eps=2.0, steps=100)
    rnd = random_baseline(forward, lens, X, res.perturbation_norm, objective="activate", latent=5,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rnd.perturbation_norm, res.perturbation_norm)
    assert rnd.success.sum() < res.success.sum()


def test_site_forward_reads_a_module_activation():
    torch.manual_seed(0)  # test-only: model init
    net = nn.Sequential(nn.Linear(4, D), nn.Tanh(), nn.Linear(D, 3))
    fwd = site_forward(net, "1")
    x = torch.randn(5, 4)
    h, logits = fwd(x)
    torch.testing.assert_close(h, torch.tanh(net[0](x)))
    torch.testing.assert_close(logits, net(x))
    res = fragility_attack(fwd, ReLULens(bias=0.0), x, objective="untargeted", eps=1.0, steps=20, kl_bound=1.0)
    assert res.success.shape == (5,) and (res.perturbation_norm <= 1.0 + 1e-5).all()


def test_bad_input():
    lens = ReLULens()
    with pytest.raises(ValueError, match="eps must be"):
        fragility_attack(forward, lens, X, eps=0.0)
    with pytest.raises(ValueError, match="kl_bound must be"):
        fragility_attack(forward, lens, X, kl_bound=-1.0)
    with pytest.raises(ValueError, match="needs latent"):
        fragility_attack(forward, lens, X, objective="activate")
    with pytest.raises(ValueError, match="objective must be"):
        fragility_attack(forward, lens, X, objective="flip")
    with pytest.raises(ValueError, match="targeted needs target_h"):
        fragility_attack(forward, lens, X, objective="targeted")
    with pytest.raises(ValueError, match=r"activations \[B, d\] and logits"):
        fragility_attack(lambda x: (x, (x @ OUT.T)[:, None]), lens, X)


def test_attack_plugs_into_an_assay_topk_sae_and_beats_random():
    from assay.dictionaries.topk import TopKConfig, TopKSAE

    sae = TopKSAE(TopKConfig(d_in=D, d_sae=32, k=4))
    torch.manual_seed(0)  # test-only: model init
    net = nn.Sequential(nn.Linear(6, D), nn.Tanh(), nn.Linear(D, 5))
    fwd = site_forward(net, "1")
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    res = fragility_attack(fwd, sae, x, objective="untargeted", eps=1.0, steps=50, kl_bound=0.05)
    rnd = random_baseline(fwd, sae, x, res.perturbation_norm, kl_bound=0.05,
                          generator=torch.Generator().manual_seed(0))
    assert res.success.float().mean() >= 0.3  # measured 0.69 (random: 0.13)
    assert res.success.sum() > rnd.success.sum()
    assert (res.kl[res.success] <= 0.05).all()


def test_token_level_attack_swaps_in_the_token_that_fires_the_latent():
    from assay.robustness.sae_fragility import token_fragility_attack

    V = 20
    E = torch.zeros(V, D)
    E[torch.arange(V), torch.arange(V) % 5] = 1.0  # tokens write dims 0-4
    E[7, 5] = 6.0  # only token 7 writes dim 5 (output null space), strongly

    def fwd(embeds):  # mean-pooled embedding is the SAE site; the output reads dims 0-2
        h = embeds.mean(1)
        return h, h @ OUT.T

    tokens = torch.tensor([[1, 2, 3, 4, 1, 2], [0, 3, 3, 1, 4, 4]])
    editable = torch.tensor([False, False, False, False, True, True])
    lens = ReLULens(bias=-0.5)
    res = token_fragility_attack(fwd, E, tokens, lens, editable=editable, objective="activate", latent=5,
                                 iters=5, top_k=4, n_candidates=16, kl_bound=0.5,
                                 generator=torch.Generator().manual_seed(0))
    assert res.success.all()
    assert (res.tokens[:, :4] == tokens[:, :4]).all()  # only editable positions change
    assert (res.tokens[:, 4:] == 7).any(1).all() and (res.n_edits >= 1).all()
    assert (lens.encode(fwd(E[res.tokens])[0])[:, 5] > 0).all()
    with pytest.raises(ValueError, match="editable mask"):
        token_fragility_attack(fwd, E, tokens, lens, editable=torch.ones(3, dtype=torch.bool))
    for bad in (-1, D):  # both attacks check the latent index the same way
        with pytest.raises(ValueError, match="latent index out of range"):
            token_fragility_attack(fwd, E, tokens, lens, editable=editable, objective="activate", latent=bad)
        with pytest.raises(ValueError, match="latent index out of range"):
            fragility_attack(forward, lens, X, objective="activate", latent=bad)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "archetypal", "mp"])
def test_pre_activations_are_the_scores_each_sae_keeps(arch):
    """Independent of the attack: every nonzero code equals its pre-activation score (ReLU, JumpReLU and
    TopK keep the score itself; MP's first greedy coefficient is its largest correlation)."""
    from assay.dictionaries.registry import build_sae
    from assay.robustness.sae_fragility import pre_activations

    kw = {"k": 3} if arch in ("topk", "batchtopk", "matryoshka", "archetypal", "mp") else {}
    sae = build_sae(arch, d_in=D, d_sae=24, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.b_dec.add_(torch.randn(D, generator=g))  # a trained b_dec is never zero
        if arch == "mp":
            sae.input_scale.fill_(1.7)
    h = torch.randn(32, D, generator=g) * 2
    z, pre = sae.encode(h), pre_activations(sae, h)
    if arch == "mp":
        first = pre.argmax(1)
        torch.testing.assert_close(z.gather(1, first[:, None]).squeeze(1) != 0, torch.ones(32, dtype=torch.bool))
        return
    on = z != 0
    assert on.any()
    torch.testing.assert_close(z[on], pre[on])
