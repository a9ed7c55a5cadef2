"""The LFA fidelity report (assay.evaluate.local_fidelity, Han, Srinivas & Lakkaraju 2022): zero loss where
an explanation is the exact linear surrogate of its neighbourhood, the Gaussian closed form of a quadratic
model, and the explanation that matches the neighbourhood winning."""

import pytest
import torch
from torch import nn

from assay.config import ConfigError
from assay.evaluate.local_fidelity import Neighbourhood, lfa_loss

pytestmark = pytest.mark.usefixtures("one_thread")


class Affine(nn.Module):
    """Logits (w·x + b, 0)."""

    def __init__(self, w: torch.Tensor, b: float = 0.5):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        f = (x.flatten(1) * self.w.flatten()).sum(1) + self.b
        return torch.stack([f, torch.zeros_like(f)], 1)


def _grid(shape=(3, 4, 4), patch=2):
    """Feature ids of patch × patch squares over all channels (built independently of the engine's)."""
    C, H, W = shape
    ids = (torch.arange(H)[:, None] // patch) * (W // patch) + torch.arange(W)[None] // patch
    return ids.expand(C, H, W)


def test_the_gradient_is_the_exact_surrogate_of_a_linear_model_under_gaussian_noise():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    x = torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64)
    model = Affine(w)
    nb = Neighbourhood(kind="gaussian", sigma=0.1, n_samples=4000)
    grad = lfa_loss(model, x, w.expand_as(x), 0, neighbourhood=nb)
    assert float(grad.loss.max()) < 1e-20
    # the zero explanation's loss is E[(wᵀξ)²] = σ²‖w‖² (Monte Carlo, 4000 draws: ±4.5%)
    torch.testing.assert_close(grad.null_loss, torch.full((4,), 0.01 * float(w.pow(2).sum()), dtype=torch.float64),
                               rtol=0.1, atol=0)
    gxi = lfa_loss(model, x, w * x, 0, neighbourhood=nb)  # input × gradient is not this neighbourhood's surrogate
    assert bool((gxi.loss > 0.05 * gxi.null_loss).all())


def test_occlusion_and_kernel_shap_are_exact_under_binary_masks_with_the_zero_baseline():
    """x′ = z ⊙ x over 2×2 patches: f(x′) − f(x) = Σ_F (z_F − 1)·Σ_{i∈F} w_i x_i, which occlusion (drops of
    the patches, written on each of their elements, so divided by the patch size) and KernelSHAP recover."""
    from assay.attribution import KernelShapConfig, OcclusionConfig, attribute

    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    x = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64)
    model, fm = Affine(w), _grid()
    size = torch.bincount(fm.flatten())[fm]  # elements per patch, per element
    nb = Neighbourhood(kind="mask", n_samples=300)
    occ = attribute(model, x, 0, config=OcclusionConfig(), baseline=0.0, feature_mask=fm).values
    shap = attribute(model, x, 0, config=KernelShapConfig(n_samples=100, seed=0), baseline=0.0, feature_mask=fm).values
    for phi in (occ / size, shap / size, w * x):
        r = lfa_loss(model, x, phi, 0, neighbourhood=nb, feature_mask=fm)
        assert float(r.loss.max()) < 1e-18 and bool((r.null_loss > 0.01).all())
    grad = lfa_loss(model, x, w.expand_as(x), 0, neighbourhood=nb, feature_mask=fm)
    assert bool((grad.loss > 0.01).all())  # the gradient's slopes are not the masks' coefficients
    # a non-zero fill: SHAP's coefficients become w ⊙ (x − b)
    nb_b = Neighbourhood(kind="mask", baseline=0.3, n_samples=300)
    assert float(lfa_loss(model, x, w * (x - 0.3), 0, neighbourhood=nb_b, feature_mask=fm).loss.max()) < 1e-18


def test_gaussian_loss_of_the_gradient_on_a_quadratic_matches_the_closed_form():
    """f(x) = ½ xᵀAx + bᵀx, φ = ∇f(x): the residual is ½ ξᵀAξ, so the loss is ¼σ⁴(2 tr A² + (tr A)²)."""
    g = torch.Generator().manual_seed(2)
    d, sigma = 6, 0.3
    M = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = (M + M.T) / 2
    b = torch.randn(d, generator=g, dtype=torch.float64)

    def model(x):
        f = 0.5 * torch.einsum("bi,ij,bj->b", x, A, x) + x @ b
        return torch.stack([f, -f], 1)

    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    r = lfa_loss(model, x, x @ A + b, 0, neighbourhood=Neighbourhood(sigma=sigma, n_samples=40_000),
                 generator=torch.Generator().manual_seed(3))
    expect = 0.25 * sigma**4 * (2 * torch.trace(A @ A) + torch.trace(A) ** 2)
    torch.testing.assert_close(r.loss, expect.expand(2), rtol=0.06, atol=0)  # Monte Carlo: ±2.5% (2 sd)


def test_the_neighbourhood_decides_which_explanation_wins_and_bad_inputs_fail():
    """On a small MLP the gradient beats input × gradient under small Gaussian noise; under binary masks
    (zero fill) input × gradient beats the gradient — Han et al.'s "no explanation is best everywhere"."""
    g = torch.Generator().manual_seed(4)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.rand(16, 8, generator=g, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    mlp(xg)[:, 0].sum().backward()
    grad = xg.grad
    small = Neighbourhood(sigma=0.01, n_samples=500)
    masks = Neighbourhood(kind="mask", n_samples=500)
    loss = {(n, k): float(lfa_loss(mlp, x, phi, 0, neighbourhood=nb).loss.mean())
            for n, phi in (("grad", grad), ("gxi", grad * x)) for k, nb in (("gauss", small), ("mask", masks))}
    # measured: gradient 3.6e-11 (Gaussian) vs 9.5e-3 (masks); input × gradient 3.0e-6 vs 7.4e-5
    assert loss["grad", "gauss"] < loss["gxi", "gauss"] / 1000 and loss["gxi", "mask"] < loss["grad", "mask"] / 10, loss
    with pytest.raises(ConfigError, match="kind"):
        Neighbourhood(kind="uniform")
    with pytest.raises(ConfigError, match="keep"):
        Neighbourhood(kind="mask", keep=1.0)
    with pytest.raises(ValueError, match="feature_mask"):
        lfa_loss(mlp, x, grad, 0, neighbourhood=small, feature_mask=torch.zeros(8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        lfa_loss(mlp, x, grad, 0, neighbourhood=masks, feature_mask=torch.zeros(8))
