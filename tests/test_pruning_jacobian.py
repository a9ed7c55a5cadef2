"""Jacobian-matching distillation (Srinivas & Fleuret 2018) against torch.autograd.functional.jacobian,
the noise-equivalence closed form, Monte-Carlo unbiasedness of the projections, finite differences,
and a tiny distillation run."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assay.pruning.jacobian import JacobianMatchingConfig, jacobian_matching_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(d: int, h: int, c: int, seed: int, dtype=torch.float32) -> nn.Sequential:
    """A tanh MLP with weights large enough to be clearly nonlinear."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            scale = 1.5 / p.shape[-1] ** 0.5 if p.dim() == 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * scale)
    return m


def _jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[batch, n_out, d_in] by torch.autograd.functional.jacobian, one example at a time."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi) for xi in x])


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def pair():
    teacher, student = _mlp(4, 16, 3, 0, torch.float64), _mlp(4, 8, 3, 1, torch.float64)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(3))
    return teacher, student, x, labels


def test_jacobian_term_matches_autograd_functional_jacobian(pair):
    teacher, student, x, labels = pair
    jt, js = _jacobians(teacher, x), _jacobians(student, x)
    with torch.no_grad():
        t = teacher(x)
    rows = torch.arange(len(x))
    top = t.argmax(1)
    assert len(set(top.tolist())) > 1  # the arg-max differs between examples: per-row picking is exercised
    top2 = t.topk(2, dim=1).indices
    expected = {
        ("all", False): (jt - js).pow(2).sum((1, 2)).mean(),
        ("all", True): (_unit(jt) - _unit(js)).pow(2).sum(2).mean(),
        ("teacher_top", True): (_unit(jt[rows, top]) - _unit(js[rows, top])).pow(2).sum(1).mean(),
        ("teacher_top", False): (jt[rows, top] - js[rows, top]).pow(2).sum(1).mean(),
        ("label", True): (_unit(jt[rows, labels]) - _unit(js[rows, labels])).pow(2).sum(1).mean(),
        ("top_k", True): torch.stack([(_unit(jt[rows, top2[:, k]]) - _unit(js[rows, top2[:, k]])).pow(2).sum(1)
                                      for k in range(2)]).mean(),
    }
    for (outputs, normalise), value in expected.items():
        cfg = JacobianMatchingConfig(outputs=outputs, normalise=normalise, k=2)
        got = jacobian_matching_loss(teacher, student, x, cfg, labels=labels).jacobian
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12, msg=f"{outputs} normalise={normalise}")


def test_zero_when_the_student_is_the_teacher(pair):
    teacher, _, x, labels = pair
    student = copy.deepcopy(teacher)
    for outputs in ("teacher_top", "top_k", "label", "all", "projection"):
        for output_loss in ("kd", "mse"):
            cfg = JacobianMatchingConfig(outputs=outputs, output_loss=output_loss, k=2, n_projections=2)
            loss = jacobian_matching_loss(teacher, student, x, cfg, labels=labels,
                                          generator=torch.Generator().manual_seed(0))
            assert float(loss.jacobian.detach()) == pytest.approx(0, abs=1e-12)
            assert float(loss.output.detach()) == pytest.approx(0, abs=1e-12)
            torch.testing.assert_close(loss.ce.detach(), F.cross_entropy(teacher(x), labels).detach())


def test_the_spec_noise_equivalence_check():
    """T(x) = [[1,2],[0,1]]x, S(x) = [[0,1],[1,1]]x, x = (1, 1), σ = 0.5: 5 + 0.25·3 = 5.75 (exact for linear
    maps), against Monte Carlo of distillation with Gaussian input noise."""
    teacher, student = nn.Linear(2, 2, bias=False).double(), nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        student.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    x = torch.ones(1, 2, dtype=torch.float64)
    cfg = JacobianMatchingConfig(outputs="all", normalise=False, output_loss="mse", jacobian_weight=0.25)
    loss = jacobian_matching_loss(teacher, student, x, cfg)
    output, jacobian, total = (float(v.detach()) for v in (loss.output, loss.jacobian, loss.total))
    assert output == pytest.approx(5.0) and jacobian == pytest.approx(3.0) and total == pytest.approx(5.75)
    noisy = x + 0.5 * torch.randn(400_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        d = (teacher(noisy) - student(noisy)).pow(2).sum(1)
    assert abs(float(d.mean()) - 5.75) < 4 * float(d.std()) / len(d) ** 0.5


def test_random_projections_estimate_the_squared_frobenius_distance_without_bias():
    g = torch.Generator().manual_seed(4)
    teacher, student = nn.Linear(4, 5).double(), nn.Linear(4, 5).double()
    with torch.no_grad():
        for m in (teacher, student):
            m.weight.copy_(torch.randn(5, 4, generator=g, dtype=torch.float64))
    frobenius = float((teacher.weight - student.weight).detach().pow(2).sum())
    x = torch.zeros(50_000, 4, dtype=torch.float64)  # one projection per row: 50,000 draws of v
    cfg = JacobianMatchingConfig(outputs="projection", normalise=False, output_loss="none")
    got = float(jacobian_matching_loss(teacher, student, x, cfg, generator=g).jacobian.detach())
    assert got == pytest.approx(frobenius, rel=0.03)  # relative standard error <= sqrt(2/50000) = 0.6%


def test_the_loss_is_differentiable_in_the_student_only(pair):
    teacher, student, x, labels = pair
    student = copy.deepcopy(student)
    cfg = JacobianMatchingConfig(outputs="top_k", k=2, output_loss="kd")
    loss = jacobian_matching_loss(teacher, student, x, cfg, labels=labels)
    weight = student[0].weight
    grad = torch.autograd.grad(loss.jacobian, weight, retain_graph=True)[0]
    loss.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = 1e-5

    def at(shift: float) -> float:
        with torch.no_grad():
            weight.add_(shift * direction)
        try:
            return float(jacobian_matching_loss(teacher, student, x, cfg, labels=labels).jacobian.detach())
        finally:
            with torch.no_grad():
                weight.sub_(shift * direction)

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-5)


def _distil(teacher, x_train, jacobian_weight: float, seed: int) -> nn.Module:
    student = _mlp(4, 32, 3, 100 + seed)
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    cfg = JacobianMatchingConfig(outputs="all", normalise=False, output_loss="mse", jacobian_weight=jacobian_weight)
    for _ in range(300):
        loss = jacobian_matching_loss(teacher, student, x_train, cfg).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student


def test_matching_jacobians_transfers_input_gradients_to_held_out_points():
    """16 training points, a 4-64-3 tanh teacher, a 4-32-3 student, 300 Adam steps. Held-out relative
    input-gradient error ‖J_t − J_s‖²_F / ‖J_t‖²_F measured for seeds 0, 1, 2: output-only 0.565, 0.398,
    0.630; with the full-Jacobian term 0.296, 0.202, 0.390 (and the held-out output error falls too)."""
    g = torch.Generator().manual_seed(0)
    teacher = _mlp(4, 64, 3, 0)
    x_train, x_test = torch.randn(16, 4, generator=g), torch.randn(256, 4, generator=g)
    jt = _jacobians(teacher, x_test)
    errors = []
    for weight in (0.0, 1.0):
        js = _jacobians(_distil(teacher, x_train, weight, seed=0), x_test)
        errors.append(float((jt - js).pow(2).sum() / jt.pow(2).sum()))
    output_only, matched = errors
    assert matched < 0.75 * output_only, errors


def test_bad_input_is_refused(pair):
    teacher, student, x, labels = pair
    with pytest.raises(ValueError, match="pass labels="):
        jacobian_matching_loss(teacher, student, x, JacobianMatchingConfig(outputs="label"))
    with pytest.raises(ValueError, match="k=4"):
        jacobian_matching_loss(teacher, student, x, JacobianMatchingConfig(outputs="top_k", k=4))
    with pytest.raises(ValueError, match="labels must have shape"):
        jacobian_matching_loss(teacher, student, x, labels=labels[:3])
    with pytest.raises(ValueError, match=r"\[batch, n_out\]"):
        jacobian_matching_loss(teacher, nn.Flatten(0), x)
    with pytest.raises(ValueError, match="do not match the teacher"):
        jacobian_matching_loss(teacher, _mlp(4, 8, 5, 0, torch.float64), x)
    for kwargs in ({"temperature": 0.0}, {"k": 0}, {"n_projections": 0}, {"jacobian_weight": -1.0}):
        with pytest.raises(ValueError):
            JacobianMatchingConfig(**kwargs)
