"""Ground-truth metrics (detection, absorption/splitting, entanglement, selectivity) on hand-built cases
whose answer is known: a perfect dictionary scores 1 (or 0 absorption), independent codes score chance."""

import pytest
import torch

from assay.evaluate.absorption import absorption, feature_splitting
from assay.evaluate.detection import (
    activation_mcc,
    f1_matrix,
    latent_detection,
    one_hot_concepts,
    sparse_probe_auroc,
)
from assay.evaluate.entanglement import entanglement, participation_ratio
from assay.evaluate.geometry import unit
from assay.evaluate.selectivity import intervention_selectivity
from assay.worlds.base import make_generator
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def _world(**kw):
    cfg = SuperpositionConfig(**{"n_features": 16, "d_model": 8, "p_max": 0.3, "p_min": 0.05, **kw})
    return SuperpositionWorld(cfg)


class LinearLens:
    """encode = ReLU(h Dᵀ), decode = z D (a dictionary with atoms D)."""

    def __init__(self, D):
        self.D = D

    def encode(self, h):
        return (h @ self.D.t()).relu()

    def decode(self, z):
        return z @ self.D


def test_f1_hand_case():
    z = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    y = torch.tensor([[True], [False], [True], [False]])
    assert f1_matrix(z, y).squeeze(1).tolist() == pytest.approx([1.0, 0.5])


def test_perfect_dictionary_detects_every_feature():
    w = _world()
    b = w.sample(4000, generator=make_generator(1))
    m = latent_detection(b.labels["acts"], b.labels["active"])
    assert m.mean_auroc == pytest.approx(1.0)
    assert m.mean_f1 == pytest.approx(1.0)
    assert torch.equal(m.best_auroc_latent, torch.arange(16))
    assert m.probe_auroc[1].min().item() > 0.999
    for k in (2, 5):  # other latents get small (regularised) weights
        assert m.probe_auroc[k].min().item() > 0.98
    mcc, per = activation_mcc(b.labels["acts"], b.labels["acts"])
    assert mcc == pytest.approx(1.0) and per.min().item() == pytest.approx(1.0)


def test_independent_codes_score_chance():
    w = _world()
    b = w.sample(4000, generator=make_generator(2))
    z = torch.rand(4000, 16, generator=make_generator(3)) * (torch.rand(4000, 16, generator=make_generator(4)) < 0.2)
    m = latent_detection(z, b.labels["active"], probe_ks=(1, 5))
    assert 0.5 < m.mean_auroc < 0.56  # the best of 16 chance detectors
    assert m.probe_auroc[5].nanmean().item() == pytest.approx(0.5, abs=0.05)
    mcc, _ = activation_mcc(z, b.labels["acts"])
    assert mcc < 0.08


def test_probe_finds_a_feature_split_over_two_latents():
    # concept = a OR b with a, b disjoint halves; each half detected by its own latent: k=2 beats k=1
    g = make_generator(5)
    half = torch.rand(6000, generator=g) < 0.5
    on = torch.rand(6000, generator=g) < 0.4
    z = torch.stack([(on & half).double(), (on & ~half).double(), torch.rand(6000, generator=g).double()], 1)
    p = sparse_probe_auroc(z, on[:, None], ks=(1, 2))
    assert p[2][0].item() > 0.999
    assert p[1][0].item() < 0.8


def test_one_hot_concepts_from_int_and_set_labels():
    depth = torch.tensor([[0, 1, 2, 1, -1], [0, 1, 0, -1, -1]])
    anc = torch.zeros(2, 5, 3, dtype=torch.bool)
    anc[0, 1, 2] = True
    mask = depth >= 0
    y, names = one_hot_concepts({"depth": depth, "anc": anc}, mask=mask)
    assert names == ("depth=0", "depth=1", "depth=2", "anc[2]")
    assert y.shape == (7, 4)
    assert y[:, 0].tolist() == [True, False, False, False, True, False, True]
    with pytest.raises(ValueError, match="real-valued"):
        one_hot_concepts({"x": torch.rand(3)})


def _hier_world():
    return _world(n_features=12, hierarchy=(3, 3, 0, 0, 0, 0), p_max=0.5, p_min=0.3, profile="constant")


def test_absorption_perfect_and_absorbed():
    w = _hier_world()
    b = w.sample(3000, generator=make_generator(6))
    acts, active, G = b.labels["acts"], b.labels["active"], w.directions
    perfect = absorption(acts, active, w.parents, atoms=G, directions=G)
    assert perfect.parents.tolist() == [0, 4]
    assert perfect.mean_absorption == 0.0
    assert perfect.recall_alone.tolist() == [1.0, 1.0] and perfect.recall_with_child.tolist() == [1.0, 1.0]
    # absorbed: the parent latent goes silent whenever a child fires, child atoms carry the parent direction
    z = acts.clone()
    atoms = G.clone()
    for p in (0, 4):
        kids = (w.parents == p).nonzero().squeeze(1)
        z[active[:, kids].any(1), p] = 0
        atoms[kids] = unit(G[kids] + G[p]).float()
    ab = absorption(z, active, w.parents, atoms=atoms, directions=G)
    assert ab.mean_absorption == 1.0 and ab.mean_recall_gap == 1.0
    assert ab.recall_with_child.tolist() == [0.0, 0.0]
    assert absorption(z, active, w.parents).mean_absorption == 1.0  # precision criterion agrees
    with pytest.raises(ValueError, match="both atoms and directions"):
        absorption(z, active, w.parents, atoms=atoms)


def test_feature_splitting_counts():
    w = _world()
    b = w.sample(3000, generator=make_generator(7))
    acts, active = b.labels["acts"], b.labels["active"]
    assert feature_splitting(acts, active).split_count.tolist() == [1] * 16
    half = torch.rand(3000, generator=make_generator(8)) < 0.5
    z = torch.cat([acts, acts[:, :1]], 1)
    z[half, 0] = 0
    z[~half, 16] = 0  # feature 0 split over latents 0 and 16
    s = feature_splitting(z, active)
    assert s.split_count[0].item() == 2 and s.split_count[1:].tolist() == [1] * 15
    assert s.fraction_split == pytest.approx(1 / 16)


def test_entanglement_perfect_mixed_and_pr():
    assert participation_ratio(torch.tensor([[1.0, 0, 0], [1, 1, 1]]), 1).tolist() == [1.0, 3.0]
    w = _world()
    b = w.sample(20000, generator=make_generator(9))
    acts = b.labels["acts"]
    e = entanglement(acts, acts)
    assert e.mean_concepts_per_latent == pytest.approx(1.0, abs=0.01)
    assert e.mean_latents_per_concept == pytest.approx(1.0, abs=0.01)
    assert e.count_concepts_per_latent == 1.0
    # each latent the sum of two features (pairs 2j, 2j+1 → latent j): two concepts per latent
    mixed = acts[:, 0::2] + acts[:, 1::2]
    m = entanglement(mixed, acts)
    assert m.concepts_per_latent.min().item() > 1.5
    assert m.count_concepts_per_latent == 2.0


def test_selectivity_orthogonal_world():
    G = torch.linalg.qr(torch.randn(8, 8, generator=make_generator(10)))[0]  # orthonormal rows
    w = _world(n_features=8, d_model=8)
    h = w.sample(500, generator=make_generator(11)).labels["acts"] @ G  # x = a G
    readout = lambda x: x @ G.t()  # noqa: E731 — the true coefficients
    pairs = [(c, c) for c in range(8)]
    perfect = intervention_selectivity(LinearLens(G), h, pairs, readout, directions=G)
    assert perfect.selectivity.min().item() == pytest.approx(1.0)
    assert perfect.mean_relative == pytest.approx(1.0)
    R = torch.linalg.qr(torch.randn(8, 8, generator=make_generator(12)))[0]
    rnd = intervention_selectivity(LinearLens(R), h, pairs, readout, directions=G)
    assert rnd.mean_selectivity < 0.4  # chance 1/8 on average; one random direction spreads over all


def test_selectivity_superposition_relative_to_true_direction():
    w = _world(n_features=32, d_model=8)
    G = w.directions
    h = w.sample(500, generator=make_generator(13)).inputs
    readout = lambda x: x @ G.t()  # noqa: E731
    pairs = [(c, c) for c in range(0, 32, 4)]
    perfect = intervention_selectivity(LinearLens(G), h, pairs, readout, directions=G)
    assert perfect.relative.tolist() == pytest.approx([1.0] * 8)
    assert perfect.mean_selectivity < 1.0  # interference: even the true direction moves other features
    rnd = intervention_selectivity(LinearLens(unit(torch.randn(32, 8, generator=make_generator(14))).float()), h,
                                   pairs, readout, directions=G)
    assert rnd.mean_relative < 0.5
    with pytest.raises(ValueError, match="assignment is empty"):
        intervention_selectivity(LinearLens(G), h, [], readout)
