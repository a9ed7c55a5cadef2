"""SAE architectures: check values from specs/dictionaries.md, and one contract suite over all of them."""

import json
import math

import pytest
import torch

from assay.artifact import ArtifactError
from assay.dictionaries.archetypal import project_archetypal
from assay.dictionaries.base import geometric_median, remove_parallel_component, topk_lr
from assay.dictionaries.batchtopk import BatchTopKConfig, BatchTopKSAE, batch_topk_codes
from assay.dictionaries.jumprelu import heaviside_step, jumprelu
from assay.dictionaries.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from assay.dictionaries.mp import matching_pursuit
from assay.dictionaries.registry import ARCHITECTURES, build_sae, load_sae, save_sae
from assay.dictionaries.relu import norm_weighted_l1
from assay.dictionaries.spade import SpaDEConfig, SpaDESAE, sparsemax
from assay.lens import Lens

pytestmark = pytest.mark.usefixtures("one_thread")


def test_geometric_median_and_lr_checks():
    pts = torch.tensor([[0.0, 0], [1, 0], [0, 1], [10, 10]])
    torch.testing.assert_close(geometric_median(pts), torch.tensor([0.5, 0.5]), atol=1e-4, rtol=0)
    for n, lr in [(4096, 4e-4), (16384, 2e-4), (65536, 1e-4), (131072, 7.0711e-5)]:
        assert math.isclose(topk_lr(n), lr, rel_tol=1e-4)


def test_remove_parallel_component_is_orthogonal_to_atoms():
    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    out = remove_parallel_component(grad, w)
    torch.testing.assert_close((out * w).sum(-1), torch.zeros(5), atol=1e-6, rtol=0)


def test_relu_penalty_check():
    z = torch.tensor([[1.0, 0, 2]])
    W = torch.tensor([[5.0, 0], [0, 1], [0.3, 0.4]])
    assert norm_weighted_l1(z, W).item() == pytest.approx(6.0)


def test_batchtopk_checks():
    pre = torch.tensor([[1.0, -2, 3, -4], [-5, 6, -7, 8]])
    assert torch.equal(batch_topk_codes(pre, 2), torch.tensor([[1.0, 0, 3, 0], [0, 6, 0, 8]]))
    pre = torch.tensor([[5.0, 4, 3, 0], [1, 0.5, 0.2, 0.1]])
    z = batch_topk_codes(pre, 2)
    assert torch.equal(z, torch.tensor([[5.0, 4, 3, 0], [1, 0, 0, 0]]))
    sae = BatchTopKSAE(BatchTopKConfig(d_in=2, d_sae=4, k=2, threshold_start=0))
    from assay.dictionaries.base import Codes

    sae.observe(Codes.from_dense(z), step=0)
    assert sae.threshold.item() == pytest.approx(1.0)  # first estimate initialises θ
    sae.observe(Codes.from_dense(z * 3), step=1)
    assert sae.threshold.item() == pytest.approx(0.999 + 0.001 * 3.0)


def test_jumprelu_check_values():
    theta = torch.tensor([0.01, 0.01, 0.01], requires_grad=True)
    pre = torch.tensor([[0.0102, 0.0090, 0.0200]], requires_grad=True)
    z = jumprelu(pre, theta, 0.001)
    torch.testing.assert_close(z.detach(), torch.tensor([[0.0102, 0.0, 0.02]]))
    gt, gp = torch.autograd.grad(z.sum(), (theta, pre))
    torch.testing.assert_close(gt, torch.tensor([-10.0, 0, 0]))
    torch.testing.assert_close(gp, torch.tensor([[1.0, 0, 1]]))
    h = heaviside_step(pre, theta, 0.001)
    torch.testing.assert_close(h.detach(), torch.tensor([[1.0, 0, 1]]))
    gt, gp = torch.autograd.grad(h.sum(), (theta, pre))
    torch.testing.assert_close(gt, torch.tensor([-1000.0, 0, 0]))
    assert torch.equal(gp, torch.zeros_like(gp))  # L0 gradients reach only θ


def test_matryoshka_single_group_is_batchtopk():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:5] = True
    m = MatryoshkaSAE(MatryoshkaConfig(d_in=8, d_sae=32, k=3, group_fractions=(1.0,), group_weights=(1.0,)))
    b = BatchTopKSAE(BatchTopKConfig(d_in=8, d_sae=32, k=3))
    om, ob = m(x, dead=dead), b(x, dead=dead)
    torch.testing.assert_close(om.loss, ob.loss)
    om.loss.backward()
    ob.loss.backward()
    for p, q in zip(m.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    m5 = MatryoshkaSAE(MatryoshkaConfig(d_in=8, d_sae=32, k=3))
    out = m5(x)
    torch.testing.assert_close(out.recon, m5.decode(out.codes.dense()))  # x̂^(G) = plain decode


def test_archetypal_projection_check():
    W = torch.tensor([[0.5, -0.2, 0.7], [0.0, 0.0, 0.0]])
    Lam = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    W2, L2 = project_archetypal(W, Lam, 1.0)
    torch.testing.assert_close(W2, torch.tensor([[0.416667, 0, 0.583333], [0, 0, 0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(L2, torch.tensor([[0.6, 0.8], [0.1, 0.0]]))


def test_matching_pursuit_check():
    atoms = torch.tensor([[1.0, 0], [0.6, 0.8]])
    x = torch.tensor([[1.0, 1.0]])
    z1, r1 = matching_pursuit(x, atoms, 1)
    torch.testing.assert_close(z1, torch.tensor([[0.0, 1.4]]))
    assert r1.pow(2).sum().item() == pytest.approx(0.04, abs=1e-6)
    z2, r2 = matching_pursuit(x, atoms, 2)
    torch.testing.assert_close(z2, torch.tensor([[0.16, 1.4]]))
    assert r2.pow(2).sum().item() == pytest.approx(0.0144, abs=1e-6)
    z3, r3 = matching_pursuit(x, atoms, 3)
    torch.testing.assert_close(z3, z2)


def test_sparsemax_and_spade_checks():
    torch.testing.assert_close(sparsemax(torch.tensor([1.0, 0.5, -1])), torch.tensor([0.75, 0.25, 0]))
    torch.testing.assert_close(sparsemax(torch.tensor([0.1, 0.0, -0.1])), torch.tensor([0.4333, 0.3333, 0.2333]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(sparsemax(torch.tensor([3.0, 0, 0])), torch.tensor([1.0, 0, 0]))
    v = torch.tensor([[1.0, 0.5, 0.3, -1]], dtype=torch.float64, requires_grad=True)
    (jac,) = torch.autograd.grad(sparsemax(v)[0, 0], v)
    torch.testing.assert_close(jac, torch.tensor([[1 - 1 / 3, -1 / 3, -1 / 3, 0]], dtype=torch.float64))
    sae = SpaDESAE(SpaDEConfig(d_in=2, d_sae=3))
    with torch.no_grad():
        sae.A_enc.copy_(torch.tensor([[0.0, 0], [1, 0], [0, 1]]))
        x = torch.tensor([[0.2, 0.1]])
        torch.testing.assert_close(sae.distances(x), torch.tensor([[0.05, 0.65, 0.85]]))
        for lam, want in [(0.25, [0.45, 0.30, 0.25]), (5.0, [1.0, 0, 0])]:
            sae.lam_pre.copy_(torch.log(torch.expm1(torch.tensor(lam))))
            torch.testing.assert_close(sae.encode(x), torch.tensor([want]), atol=1e-5, rtol=0)


def _kw(arch):
    kw = dict(d_in=8, d_sae=32, seed=1)
    if arch in ("topk", "batchtopk", "matryoshka", "archetypal", "mp"):
        kw["k"] = 4
    if arch in ("batchtopk", "matryoshka"):
        kw["threshold_start"] = 0
    return kw


def _trained(arch):
    g = torch.Generator().manual_seed(0)
    sae = build_sae(arch, **_kw(arch))
    x = torch.randn(64, 8, generator=g)
    sae.init_from_batch(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(3):
        out = sae(x, dead=torch.ones(32, dtype=torch.bool))
        out.loss.backward()
        sae.before_step()
        opt.step()
        opt.zero_grad()
        sae.after_step()
        sae.observe(out.codes, step)
    return sae, x


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_contract(arch, tmp_path):
    sae, x = _trained(arch)
    assert isinstance(sae, Lens)
    with torch.no_grad():
        z = sae.encode(x)
        # batch equals per-example; leading dims are kept
        torch.testing.assert_close(torch.cat([sae.encode(x[i : i + 1]) for i in range(4)]), z[:4])
        assert sae.encode(x.view(8, 8, 8)).shape == (8, 8, 32)
        torch.testing.assert_close(sae.decode(z), sae.decode_codes(sae.encode_codes(x)))
        # save → load identical
        save_sae(tmp_path / "sae", sae)
        back = load_sae(tmp_path / "sae")
        assert type(back) is type(sae)
        torch.testing.assert_close(back.encode(x), z)
        torch.testing.assert_close(back.decode(z), sae.decode(z))
        # folding an input scale s: codes on x equal unfolded codes on s·x; x̂_raw = x̂/s
        s = 2.5
        ref_z, ref_xhat = sae.encode(s * x), sae.decode(sae.encode(s * x))
        sae.fold_input_scale(s)
        torch.testing.assert_close(sae.encode(x), ref_z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.decode(sae.encode(x)), ref_xhat / s, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="last dimension 8"):
        sae.encode(torch.randn(3, 7))


def test_artifact_errors(tmp_path):
    sae, _ = _trained("topk")
    path = save_sae(tmp_path / "sae", sae)
    doc = json.loads((path / "config.json").read_text())
    doc["kind"] = "sae.relu"  # a TopK SAE must not load as a ReLU SAE
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not fit a 'relu' SAE"):
        load_sae(path)
    path = save_sae(tmp_path / "sae2", sae)
    with open(path / "weights.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"garbage")
    with pytest.raises(ArtifactError, match="corrupted"):
        load_sae(path)
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        build_sae("gated", d_in=4, d_sae=8)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_integer_fields_refuse_fractions_at_build_time(arch):
    """k=2.5 (or a float width) fails when the config is made, naming the field, not later in training."""
    import numpy as np

    from assay.config import ConfigError

    for field in ("d_in", "d_sae", "seed", *(("k",) if "k" in _kw(arch) else ())):
        bad = {**_kw(arch), field: _kw(arch)[field] + 0.5}
        with pytest.raises(ConfigError, match=rf"Config\.{field} must be an integer, got float"):
            build_sae(arch, **bad)
    with pytest.raises(ConfigError, match="must be an integer, got bool"):
        build_sae(arch, **{**_kw(arch), "d_in": True})
    # integer-like values (numpy, one-element tensors) are accepted and stored as plain int
    sae = build_sae(arch, **{**_kw(arch), "d_sae": np.int64(32), "d_in": torch.tensor(8)})
    assert type(sae.cfg.d_sae) is int and type(sae.cfg.d_in) is int and sae.W_dec.shape == (32, 8)


def test_optional_integer_fields_are_checked_too():
    from assay.config import ConfigError

    with pytest.raises(ConfigError, match=r"TopKConfig\.aux_k must be an integer, got float 2.5"):
        build_sae("topk", d_in=8, d_sae=32, k=4, aux_k=2.5)
    assert build_sae("topk", d_in=8, d_sae=32, k=4, aux_k=None).cfg.aux_k is None
    with pytest.raises(ConfigError, match=r"ArchetypalConfig\.n_centroids must be an integer"):
        build_sae("archetypal", d_in=8, d_sae=32, k=4, n_centroids=40.0)
