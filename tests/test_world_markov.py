import math

import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import SequenceWorld, make_generator
from assay.worlds.markov import MarkovConfig, MarkovMixtureWorld, chain_posterior, reference_predictions

T2 = torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.1, 0.9], [0.9, 0.1]]], dtype=torch.float64)
W2 = torch.tensor([0.5, 0.5], dtype=torch.float64)
S2 = torch.full((2, 2), 0.5, dtype=torch.float64)


def test_spec_check_values():
    x = torch.tensor([[0, 0, 0, 1]])  # position 3 has seen the context 0, 0, 0
    assert abs(chain_posterior(x, T2, W2, S2)[0, 3, 0].item() - 0.987805) < 1e-6
    r = reference_predictions(x, T2, W2, S2, torch.tensor([0]))
    assert abs(r["bigram_retrieval"][0, 3, 0].item() - 0.890244) < 1e-6
    assert abs(r["bigram_inference"][0, 3, 0].item() - 0.75) < 1e-12
    assert abs(r["unigram_inference"][0, 3, 0].item() - 0.8) < 1e-12
    assert abs(r["unigram_retrieval"][0, 3, 0].item() - 0.5) < 1e-12
    assert abs(r["bayes_true"][0, 3, 0].item() - 0.9) < 1e-12


def test_posterior_and_counts_match_brute_force():
    w = MarkovMixtureWorld(MarkovConfig(n_chains=3, n_states=4, seq_len=12, start="uniform"))
    b = w.sample(5, generator=make_generator(0))
    x = b.targets - 4
    ref = w.predictions(b)
    for i in range(5):
        for s in (0, 1, 5, 11):
            like = [w.weights[c].item() * (0.25 if s else 1.0) for c in range(3)]
            for c in range(3):
                for j in range(1, s):
                    like[c] *= w.transitions[c, x[i, j - 1], x[i, j]].item()
            post = torch.tensor(like) / sum(like)
            assert torch.allclose(b.labels["posterior"][i, s].double(), post.double(), atol=1e-6)
            if s >= 1:
                prev = x[i, s - 1].item()
                seen = [x[i, j].item() for j in range(1, s) if x[i, j - 1].item() == prev]
                want = torch.tensor([(seen.count(a) + 1) / (len(seen) + 4) for a in range(4)], dtype=torch.float64)
                assert torch.allclose(ref["bigram_inference"][i, s], want)


def test_structure_and_sampling_follow_the_chains():
    cfg = MarkovConfig(n_chains=2, n_states=3, seq_len=200)
    w = MarkovMixtureWorld(cfg)
    assert isinstance(w, SequenceWorld)
    assert torch.allclose(w.transitions.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.allclose(w.stationary.unsqueeze(1) @ w.transitions, w.stationary.unsqueeze(1))
    b = w.sample(400, generator=make_generator(1))
    x, chain = b.targets - 4, b.labels["chain"][:, 0]
    for c in range(2):
        xs = x[chain == c]
        counts = torch.zeros(3, 3, dtype=torch.float64)
        counts.index_put_((xs[:, :-1].flatten(), xs[:, 1:].flatten()), torch.ones(xs[:, 1:].numel(),
                          dtype=torch.float64), accumulate=True)
        assert torch.allclose(counts / counts.sum(1, keepdim=True), w.transitions[c], atol=0.03)
    assert (b.labels["posterior"][:, -1].argmax(-1) == chain).float().mean() > 0.95
    assert torch.equal(b.inputs, w.sample(400, generator=make_generator(1)).inputs)
    assert not torch.equal(b.inputs, w.sample(400, generator=make_generator(2)).inputs)
    assert not torch.equal(w.transitions, MarkovMixtureWorld(MarkovConfig(seed=1, n_chains=2, n_states=3)).transitions)


def test_evaluate_bayes_is_perfect_and_uniform_is_chance():
    w = MarkovMixtureWorld(MarkovConfig(seq_len=48))
    b = w.sample(64, generator=make_generator(3))
    ref = w.predictions(b)
    V = len(w.vocab)

    def logits(p):
        out = torch.full((*b.inputs.shape, V), -80.0, dtype=torch.float64)
        out[..., 4:] = p.log()
        return out

    m = w.evaluate(logits(ref["bayes_true"]), b)
    assert abs(m["loss_ratio"] - 1.0) < 1e-9 and abs(m["kl_bayes_true"]) < 1e-9
    mix = w.evaluate(logits(ref["bigram_retrieval"]), b)
    assert mix["loss"] >= m["loss"] and abs(mix["loss"] - mix["mixture_loss"]) < 1e-9
    u = w.evaluate(torch.zeros(*b.inputs.shape, V), b)
    assert abs(u["loss"] - math.log(V)) < 1e-9
    assert u["bayes_efficiency"] < w.acceptance[1] <= mix["bayes_efficiency"]  # threshold attainable


@pytest.mark.parametrize("kwargs, match", [({"n_states": 1}, "n_states"), ({"n_chains": 0}, "n_chains"),
                                           ({"alpha": 0.0}, "alpha"), ({"seq_len": -3}, "seq_len")])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MarkovConfig(**kwargs)
