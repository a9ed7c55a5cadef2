"""FGSM / PGD: optimal attacks on a linear margin (spec check), Captum parity, restarts, curves, training."""

import warnings

import pytest
import torch

from assay.robustness.adversarial import adversarial_fit, fgsm, pgd, project, robust_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, no spinning on shared cores

W = torch.tensor([3.0, -4.0], dtype=torch.float64)
X = torch.tensor([[0.2, 0.1]], dtype=torch.float64)
Y = torch.tensor([1])


def binary(x):  # logits (−m/2, m/2), margin m = w·x
    m = x @ W
    return torch.stack([-m / 2, m / 2], 1)


@pytest.mark.parametrize("norm, optimum", [("linf", 0.2 - 0.05 * 7), ("l2", 0.2 - 0.05 * 5)])
def test_spec_pgd_reaches_optimal_linear_attack(norm, optimum):
    for steps in (1, 2):
        att = pgd(binary, X, Y, 0.05, norm=norm, steps=steps, step_size=0.05, random_start=False)
        assert (att.x_adv @ W).item() == pytest.approx(optimum, abs=1e-6)
        assert att.success.item() == (optimum < 0)


def test_fgsm_is_one_signed_step():
    att = fgsm(binary, X, Y, 0.05)
    torch.testing.assert_close(att.x_adv, X + 0.05 * torch.tensor([[-1.0, 1.0]], dtype=torch.float64))


def test_projection_and_bounds():
    d = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    torch.testing.assert_close(project(d, 1.0, "l2"), torch.tensor([[0.6, 0.8], [0.1, 0.0]]))
    torch.testing.assert_close(project(d, 0.5, "linf"), torch.tensor([[0.5, 0.5], [0.1, 0.0]]))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 5, generator=g)
    model = torch.nn.Linear(5, 3)
    for norm in ("linf", "l2"):
        att = pgd(model, x, torch.zeros(8, dtype=torch.long), 0.3, norm=norm, bounds=(0.0, 1.0), generator=g)
        assert att.x_adv.min() >= 0 and att.x_adv.max() <= 1
        dist = (att.x_adv - x).abs().amax(1) if norm == "linf" else (att.x_adv - x).norm(dim=1)
        assert (dist <= 0.3 + 1e-6).all()


def test_targeted_attack_moves_towards_target():
    att = pgd(binary, X, torch.tensor([0]), 0.05, steps=2, step_size=0.05, random_start=False, targeted=True)
    assert (att.x_adv @ W).item() == pytest.approx(-0.15, abs=1e-6)
    assert att.success.item()


def tiny_net(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def test_linf_pgd_matches_captum_without_random_start():
    from peer_import import peer

    captum_robust = peer("captum.robust")
    net = tiny_net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 6, generator=g)
    y = net(x).argmax(1).detach()
    ours = pgd(net, x, y, 0.1, norm="linf", steps=7, step_size=0.03, random_start=False, bounds=(0.0, 1.0))
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    with warnings.catch_warnings():  # Captum warns each step that it re-enables input gradients
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        theirs = captum_robust.PGD(net, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(
            x, radius=0.1, step_size=0.03, step_num=7, target=y, random_start=False, norm="Linf")
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-6, rtol=0)


def test_restarts_never_worse_and_random_start_is_seeded():
    net = tiny_net(2)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, 6, generator=g)
    y = net(x).argmax(1).detach()
    one = pgd(net, x, y, 0.15, steps=3, generator=torch.Generator().manual_seed(4))
    again = pgd(net, x, y, 0.15, steps=3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(one.x_adv, again.x_adv)
    many = pgd(net, x, y, 0.15, steps=3, restarts=4, generator=torch.Generator().manual_seed(4))
    assert many.success.sum() >= one.success.sum()
    assert ((many.loss >= one.loss - 1e-6) | many.success).all()


def test_robust_accuracy_curve_decreases_and_adversarial_training_helps():
    # Tsipras-style data: one robust feature (±1, small noise) and ten weak, non-robust ones
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    s = (2.0 * y - 1)[:, None]
    x = torch.cat([s + 0.3 * torch.randn(400, 1, generator=g), 0.5 * s + torch.randn(400, 10, generator=g)], 1)
    torch.manual_seed(0)  # test-only: model init
    plain = torch.nn.Sequential(torch.nn.Linear(11, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    robust = torch.nn.Sequential(torch.nn.Linear(11, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    robust.load_state_dict(plain.state_dict())
    adversarial_fit(plain, x, y, eps=0.0, epochs=10, batch_size=50, lr=1e-2, seed=0)
    adversarial_fit(robust, x, y, eps=0.4, steps=3, epochs=10, batch_size=50, lr=1e-2, seed=0)
    eps = [0.0, 0.2, 0.4, 0.6]
    cp = robust_accuracy(plain, x, y, eps, steps=5, generator=torch.Generator().manual_seed(1))
    cr = robust_accuracy(robust, x, y, eps, steps=5, generator=torch.Generator().manual_seed(1))
    assert cp.accuracy[0] > 0.95
    assert (cp.accuracy[1:] <= cp.accuracy[:-1] + 1e-9).all()
    assert cr.accuracy[2] > cp.accuracy[2] + 0.1  # measured 0.985 vs 0.77


def test_bad_input():
    with pytest.raises(ValueError, match="eps must be"):
        pgd(binary, X, Y, -0.1)
    with pytest.raises(ValueError, match="norm must be"):
        pgd(binary, X, Y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="at least 2 classes"):
        fgsm(lambda x: x[:, :1], X, Y, 0.1)
    with pytest.raises(ValueError, match="y must be class ids"):
        pgd(binary, X, torch.tensor([0.5]), 0.1)


def test_bad_input_every_entry_point():
    """The issue's list: ε < 0, a model without [batch, n_classes] logits, a non-classifier."""
    seq = lambda x: torch.stack([binary(x)] * 3, 1)  # noqa: E731  [B, T, C] sequence logits
    for fn in (lambda: fgsm(binary, X, Y, -0.01), lambda: robust_accuracy(binary, X, Y, [0.0, -0.1]),
               lambda: pgd(binary, X, Y, float("nan"))):
        with pytest.raises(ValueError, match="eps must be"):
            fn()
    with pytest.raises(ValueError, match=r"logits of shape \[batch, n_classes\]"):
        pgd(seq, X, Y, 0.1)
    with pytest.raises(ValueError, match=r"logits of shape \[batch, n_classes\]"):
        robust_accuracy(seq, X, Y, [0.0])
    with pytest.raises(TypeError, match="must return a tensor"):
        fgsm(lambda x: {"logits": binary(x)}, X, Y, 0.1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        robust_accuracy(lambda x: binary(x)[:, :1], X, Y, [0.0])
