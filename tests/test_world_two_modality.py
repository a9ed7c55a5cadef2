"""The two-modality world (planted sparse concept codes + a modality gap) and SpLiCE on it (Bhalla et al. 2024):
with centring SpLiCE recovers the planted support, without centring it fails; the support metric against a loop.

Measured (c = 200, d = 64, k = 3, offsets 2, 256 queries, world seeds 0 / 1), support F1 / mean L0 / recomposition
cosine as λ varies:

    λ        0.01            0.03            0.1             0.2             0.3             0.5
    centred  0.11/51/0.976   0.19/29/0.973   0.75/5.8/0.969  0.98/3.2/0.967  0.996/3.0/0.966 0.990/3.0/0.957
    uncentr. 0.63/1.8/0.285  0.63/1.8/0.285  0.61/1.7/0.285  0.58/1.5/0.284  0.54/1.3/0.281  0.34/0.7/0.217
(seed 1 within 0.04 of these.)
"""

import pytest
import torch

from assay.concepts.dictionary import from_embeddings, modality_mean
from assay.concepts.splice import Splice, SpliceConfig
from assay.config import ConfigError
from assay.evaluate.support import support_recovery
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.two_modality import TwoModalityConfig, TwoModalityWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def test_world_is_seeded_and_its_truth_is_consistent():
    w = registry.make("two_modality", n_concepts=50, d=16)
    a, b = w.sample(8, generator=make_generator(0)), w.sample(8, generator=make_generator(0))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels["weights"], b.labels["weights"])
    assert bool((a.labels["support"].sum(1) == 3).all())
    wt = a.labels["weights"]
    assert bool((wt[a.labels["support"]] >= 0.5).all() and (wt[~a.labels["support"]] == 0).all())
    noiseless = TwoModalityWorld(TwoModalityConfig(n_concepts=50, d=16, noise=0.0))
    s = noiseless.sample(4, generator=make_generator(1))
    torch.testing.assert_close(s.inputs, s.labels["weights"] @ noiseless.concepts + noiseless.query_offset)
    assert float(noiseless.query_offset.norm()) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="k must be in"):
        TwoModalityConfig(k=0)


def test_support_recovery_against_a_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(30, 8, generator=g) * (torch.rand(30, 8, generator=g) > 0.6)
    t = torch.rand(30, 8, generator=g) > 0.6
    m = support_recovery(w, t)
    f1s, ps, rs = [], [], []
    for i in range(30):
        R, T = set((w[i] > 0).nonzero().flatten().tolist()), set(t[i].nonzero().flatten().tolist())
        hit = len(R & T)
        ps.append(hit / len(R) if R else 1.0)
        rs.append(hit / len(T) if T else 1.0)
        f1s.append(2 * hit / (len(R) + len(T)) if R or T else 1.0)
    assert m.f1 == pytest.approx(sum(f1s) / 30) and m.precision == pytest.approx(sum(ps) / 30)
    assert m.recall == pytest.approx(sum(rs) / 30) and m.l0 == pytest.approx(float((w > 0).sum()) / 30)


def test_centring_recovers_the_planted_support_and_no_centring_fails():
    world = TwoModalityWorld(TwoModalityConfig())
    ref = world.sample(512, generator=make_generator(100)).inputs
    batch = world.sample(128, generator=make_generator(200))
    centred = Splice(from_embeddings(world.names, world.name_embeddings, query_mean=modality_mean(ref)),
                     SpliceConfig(lam=0.3))
    f1 = {}
    for lam in (0.1, 0.3):
        plain = Splice(from_embeddings(world.names, world.name_embeddings, centred=False),
                       SpliceConfig(lam=lam, centre=False))
        f1[lam] = support_recovery(plain.encode(batch.inputs), batch.labels["support"]).f1
    code = centred.encode(batch.inputs)
    m = support_recovery(code, batch.labels["support"])
    cos = (centred.decode(code) * torch.nn.functional.normalize(batch.inputs, dim=1)).sum(1).mean()
    assert m.f1 > 0.95 and abs(m.l0 - 3) < 0.3 and cos > 0.9  # measured 0.996, 3.0, 0.966
    assert max(f1.values()) < 0.75  # measured 0.61 (λ 0.1), 0.54 (λ 0.3)
    assert m.f1 - max(f1.values()) > 0.3
