"""The concept-geometry cluster worlds (Hindupur et al. 2025) against quantities computed independently
from the paper's constants, and the best-k per-latent F1 against a hand case and scikit-learn."""

import math

import pytest
import torch

from assay.config import ConfigError
from assay.evaluate.detection import best_k_f1
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.concept_clusters import ConceptClustersConfig, ConceptClustersWorld

pytestmark = pytest.mark.usefixtures("one_thread")

N = 60_000


def _spec_centres():
    """The separability centres written out from the paper: radius (3, 1, 3, 1, 3, 1)/2 at 60° steps."""
    out = []
    for i, r in enumerate((1.5, 0.5, 1.5, 0.5, 1.5, 0.5)):
        out.append((r * math.cos(math.radians(60 * i)), r * math.sin(math.radians(60 * i))))
    return torch.tensor(out, dtype=torch.float64)


def test_separability_clusters_match_the_paper_and_labels_are_the_generating_cluster():
    w = ConceptClustersWorld(ConceptClustersConfig(geometry="separability", standardise=False))
    b = w.sample(N, generator=make_generator(0))
    x, k = b.inputs.double(), b.labels["cluster"]
    assert torch.equal(b.targets, k) and x.shape == (N, 2)
    centres = _spec_centres()
    var = 2**-4.5 / 2 + 1e-6
    counts = torch.bincount(k, minlength=6)
    assert (counts - N / 6).abs().max() < 5 * math.sqrt(N / 6)  # equal weights
    for c in range(6):
        xc = x[k == c]
        se = math.sqrt(var / len(xc))
        assert (xc.mean(0) - centres[c]).abs().max() < 5 * se
        assert xc.var(0).tolist() == pytest.approx([var, var], rel=0.06)
    # The label is the generating cluster: with equal weights and equal isotropic variance the Bayes
    # assignment is the nearest spec centre; the clusters are ≥ 0.866/0.149 = 5.8 std apart, so the two
    # disagree on ≈ 2·Φ(−2.9) ≈ 0.4% of the inner-cluster points at most.
    nearest = torch.cdist(x, centres).argmin(1)
    assert (nearest == k).double().mean() > 0.99


def test_inner_clusters_lie_in_the_outer_hull_so_no_half_space_isolates_them():
    c = _spec_centres()
    outer, inner = c[[0, 2, 4]], c[[1, 3, 5]]
    # barycentric coordinates of each inner centre w.r.t. the outer triangle are all positive
    A = torch.cat([outer.t(), torch.ones(1, 3, dtype=torch.float64)])
    for p in inner:
        lam = torch.linalg.solve(A, torch.cat([p, torch.ones(1, dtype=torch.float64)]))
        assert (lam > 0).all() and lam.sum().item() == pytest.approx(1.0)
    # hence every half-space {u·x ≥ u·c_inner} (a ReLU receptive field firing on the centre) holds an outer centre
    angles = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
    u = torch.stack([angles.cos(), angles.sin()], 1)
    for p in inner:
        assert ((outer @ u.t()) >= (p @ u.t()) - 1e-12).any(0).all()


def test_heterogeneity_intrinsic_dims_and_variances():
    w = ConceptClustersWorld(ConceptClustersConfig(geometry="heterogeneity", standardise=False, seed=3))
    assert w.intrinsic_dims == (6, 14, 30, 62, 126) and w.d == 128
    assert 0 <= w.centres.min() and w.centres.max() <= 300 * (1 / 50) / 128
    b = w.sample(20_000, generator=make_generator(1))
    x, k = b.inputs.double(), b.labels["cluster"]
    for c, dim in enumerate(w.intrinsic_dims):
        xc = x[k == c]
        v = xc.var(0)
        assert v[:dim].mean().item() == pytest.approx(1 / 50 / dim, rel=0.05)
        assert v[dim:].max().item() < 1e-12  # no variance off the cluster's subspace
        assert torch.allclose(xc[:, dim:], w.centres[c, dim:].double().expand(len(xc), -1))
        # total variance 1/50 for every cluster, whatever its dimension
        assert v.sum().item() == pytest.approx(1 / 50, rel=0.05)
    other = ConceptClustersWorld(ConceptClustersConfig(geometry="heterogeneity", seed=4))
    assert not torch.allclose(other.centres, ConceptClustersWorld(ConceptClustersConfig(geometry="heterogeneity",
                                                                                       seed=3)).centres)


@pytest.mark.parametrize("geometry", ["separability", "heterogeneity"])
def test_standardise_gives_zero_mean_and_mean_square_norm_d(geometry):
    w = registry.make("concept_clusters", geometry=geometry)
    x = w.sample(N, generator=make_generator(2)).inputs.double()
    assert x.pow(2).sum(1).mean().item() == pytest.approx(w.d, rel=0.02)
    assert x.mean(0).abs().max().item() < 5 * math.sqrt(x.var(0).max().item() / N)
    again = w.sample(8, generator=make_generator(2)).inputs
    assert torch.equal(again, w.sample(8, generator=make_generator(2)).inputs)


def test_bad_geometry_is_a_clear_error():
    with pytest.raises(ConfigError, match="geometry must be one of"):
        ConceptClustersConfig(geometry="spiral")


def test_best_k_f1_hand_case_and_sklearn():
    # 4 tokens, concept on tokens 0 and 1; latent a fires on {0, 1} (F1 1), b on {0} (2/3),
    # c on {0, 1, 2, 3} (2·2/(4+2) = 2/3), d never (0)
    y = torch.tensor([[1], [1], [0], [0]])
    z = torch.tensor([[1.0, 0.3, 2.0, 0.0], [0.5, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.1, 0.0]])
    assert best_k_f1(z, y, k=1).tolist() == pytest.approx([1.0])
    assert best_k_f1(z, y, k=2).tolist() == pytest.approx([(1 + 2 / 3) / 2])
    assert best_k_f1(z, y, k=4).tolist() == pytest.approx([(1 + 2 / 3 + 2 / 3) / 4])
    assert best_k_f1(z, y, k=9).tolist() == pytest.approx([(1 + 2 / 3 + 2 / 3) / 4])  # k > latents: all of them
    sk = pytest.importorskip("sklearn.metrics")
    g = make_generator(0)
    z = torch.relu(torch.randn(300, 12, generator=g))
    y = torch.rand(300, 3, generator=g) < 0.3
    ref = torch.tensor([[sk.f1_score(y[:, c].numpy(), (z[:, i] > 1e-6).numpy()) for i in range(12)]
                        for c in range(3)], dtype=torch.float64)
    want = ref.sort(1, descending=True).values[:, :5].mean(1)
    assert torch.allclose(best_k_f1(z, y, k=5), want)
    with pytest.raises(ValueError, match="k must be >= 1"):
        best_k_f1(z, y, k=0)
