"""The suffix-append SAE attack (Li, Srinivas, Bhalla & Lakkaraju's suffix mode) on a tiny random transformer:
checked against a brute-force search over every one-token suffix, against a greedy continuation written out
with the model's own token forward, and against a KL recomputed by hand."""

import pytest
import torch

from assay.dictionaries.registry import build_sae
from assay.hooks import patch
from assay.models.transformer import Transformer, TransformerConfig
from assay.robustness.sae_fragility import (
    greedy_suffix,
    pre_activations,
    random_suffix,
    site_forward,
    suffix_fragility_attack,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V, D = 8, 16
ALLOWED = torch.arange(V) >= 2  # tokens 0 and 1 (pad, bos) never go into a suffix


@pytest.fixture(scope="module")
def setup():
    model = Transformer(TransformerConfig(vocab_size=V, d_model=D, n_heads=2, n_layers=1, context=16),
                        generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)

    def call(m, e):
        with patch(m, {"embed": lambda _: e}):
            return m(torch.zeros(e.shape[:2], dtype=torch.long))

    fwd = site_forward(model, "blocks.0", call=call)
    prompts = torch.randint(2, V, (4, 5), generator=torch.Generator().manual_seed(1))
    prompts[:, 0] = 1
    return model, fwd, model.embed.weight.detach(), prompts


def _never_firing_relu_sae():
    """A ReLU SAE whose biases are so negative that no latent can fire: the search never stops early, so it
    must run to the best suffix it can find."""
    sae = build_sae("relu", d_in=D, d_sae=32, seed=0)
    with torch.no_grad():
        sae.b_enc.sub_(10.0)
    return sae


def test_greedy_suffix_is_the_models_own_argmax_continuation(setup):
    model, fwd, E, prompts = setup
    ids = prompts
    with torch.no_grad():
        for _ in range(3):  # by hand, through the model's token forward
            nxt = model(ids)[:, -1].masked_fill(~ALLOWED, float("-inf")).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    expected = ids[:, prompts.shape[1]:]
    got = greedy_suffix(lambda t: fwd(E[t])[1], prompts, 3, allowed=ALLOWED)
    assert torch.equal(got, expected)
    res = suffix_fragility_attack(fwd, E, prompts, _never_firing_relu_sae(), length=3, objective="activate", latent=0,
                                  iters=1, allowed=ALLOWED, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.init, expected)  # init="greedy" is that continuation


def test_one_token_suffix_finds_the_brute_force_optimum(setup):
    model, fwd, E, prompts = setup
    sae = _never_firing_relu_sae()
    latent = torch.tensor([3, 7, 11, 19])
    candidates = torch.nonzero(ALLOWED).flatten()
    with torch.no_grad():  # every allowed one-token suffix, scored exactly: loss = −z_j
        full = torch.cat([prompts.repeat_interleave(len(candidates), 0), candidates.repeat(len(prompts))[:, None]], 1)
        h, _ = fwd(E[full])
        z = pre_activations(sae, h).gather(1, latent.repeat_interleave(len(candidates))[:, None]).squeeze(1)
    z = z.reshape(len(prompts), len(candidates))
    best_tok = candidates[z.argmax(1)]
    for init in ("greedy", "random"):
        res = suffix_fragility_attack(fwd, E, prompts, sae, length=1, init=init, objective="activate", latent=latent,
                                      iters=3, top_k=V, n_candidates=32, allowed=ALLOWED,
                                      generator=torch.Generator().manual_seed(0))
        assert not res.success.any()  # nothing can fire: the search ran all its iterations
        assert torch.equal(res.suffix[:, 0], best_tok)
        torch.testing.assert_close(res.loss, -z.max(1).values)
        assert (res.loss <= res.init_loss + 1e-6).all()
        assert torch.equal(res.tokens[:, :prompts.shape[1]], prompts)  # the prompt never changes


def test_longer_suffix_never_ends_above_its_init_and_keeps_prompt_and_tail(setup):
    model, fwd, E, prompts = setup
    sae = build_sae("topk", d_in=D, d_sae=32, k=4, seed=0)
    tail = torch.tensor([4, 5])

    def next_logits(ids):
        return model(ids)[:, -1]

    for init in ("greedy", "random"):
        res = suffix_fragility_attack(fwd, E, prompts, sae, length=3, init=init, next_token_logits=next_logits,
                                      tail=tail, objective="untargeted", overlap_threshold=0.0, iters=4, top_k=4,
                                      n_candidates=16, allowed=ALLOWED, generator=torch.Generator().manual_seed(2))
        T = prompts.shape[1]
        assert res.tokens.shape == (4, T + 3 + 2)
        assert torch.equal(res.tokens[:, :T], prompts) and (res.tokens[:, T + 3:] == tail).all()
        assert ALLOWED[res.suffix].all() and ALLOWED[res.init].all()
        assert (res.loss <= res.init_loss + 1e-6).all()
        with torch.no_grad():  # the KL is against the clean prompt + tail, read at the last position
            p0 = model(torch.cat([prompts, tail.expand(4, -1)], 1))[:, -1].log_softmax(-1)
            p1 = model(res.tokens)[:, -1].log_softmax(-1)
        torch.testing.assert_close(res.kl, (p0.exp() * (p0 - p1)).sum(-1), atol=1e-5, rtol=1e-4)


def test_random_suffix_draws_only_allowed_tokens_uniformly():
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[[2, 5, 6]] = True
    s = random_suffix(allowed, 3000, 2, generator=torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) == {2, 5, 6}
    counts = torch.bincount(s.flatten(), minlength=V)[[2, 5, 6]].float() / s.numel()
    assert (counts - 1 / 3).abs().max() < 0.02  # 6000 draws: standard error 0.006


def test_bad_suffix_input(setup):
    model, fwd, E, prompts = setup
    sae = _never_firing_relu_sae()
    with pytest.raises(ValueError, match="length"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=0)
    with pytest.raises(ValueError, match="needs next_token_logits"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=2, tail=torch.tensor([4]))
    with pytest.raises(ValueError, match="init must be"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=2, init="beam")
    with pytest.raises(ValueError, match=r"\[B, length\]"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=2, init=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="allowed must be"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=2, allowed=torch.zeros(V, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs latent"):
        suffix_fragility_attack(fwd, E, prompts, sae, length=2, objective="activate")
