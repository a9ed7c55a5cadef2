import pytest
import torch
from scipy.optimize import brentq

from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.matrix_completion import (
    MatrixCompletionConfig,
    MatrixCompletionWorld,
    shrink_singular_values,
    svt_complete,
)
from assay.worlds.vocab import IGNORE, SEP


def test_tokens_round_trip_and_rows_spell_the_masked_matrix():
    w = MatrixCompletionWorld(MatrixCompletionConfig(layout="copy"))
    assert len(w.vocab) == 4 + 1 + 41  # specials, <mask>, values −2.0 … 2.0 at 0.1
    v = torch.arange(-20, 21, dtype=torch.float64) / 10
    assert torch.allclose(w.detokenize(w.tokenize(v)), v)
    b = w.sample(500, generator=make_generator(0))
    assert torch.equal(b.inputs, w.sample(500, generator=make_generator(0)).inputs)
    n2 = 25
    M, mask = b.labels["matrix"].double(), b.labels["mask"]
    U, V = b.labels["U"].double(), b.labels["V"].double()
    # independent: the matrix is U Vᵀ rounded to 0.1, of rank 2 before rounding
    assert torch.allclose(M, torch.round(U @ V.transpose(1, 2) * 10) / 10, atol=1e-6)
    assert (torch.linalg.matrix_rank(U @ V.transpose(1, 2)) == 2).all()
    for row, m, k in zip(b.inputs[:20], M[:20], mask[:20]):
        first, sep, second = row[:n2], row[n2], row[n2 + 1 :]
        assert sep == SEP and torch.equal(first, second)
        shown = [w.vocab[i] for i in first.tolist()]
        expect = ["<mask>" if k.flatten()[j] else f"{m.flatten()[j].item():.6g}" for j in range(n2)]
        assert shown == expect
    assert (b.targets[:, : n2 + 1] == IGNORE).all()
    assert torch.allclose(w.detokenize(b.targets[:, n2 + 1 :]).reshape(-1, 5, 5), M, atol=1e-6)
    assert abs(mask.double().mean().item() - 0.3) < 0.02
    # the plateau level E[M²] = r/9 (spec §1.5): Monte Carlo on 500 matrices
    assert abs((M**2).mean().item() - 2 / 9) < 0.02
    masked_only = MatrixCompletionWorld(MatrixCompletionConfig(layout="copy", loss_on="masked")).sample(
        50, generator=make_generator(0))
    assert torch.equal(masked_only.targets[:, n2 + 1 :] != IGNORE, masked_only.labels["mask"].reshape(50, -1))
    # the encoder layout is the first copy alone, with the targets at the same positions
    enc = MatrixCompletionWorld().sample(500, generator=make_generator(0))
    assert torch.equal(enc.inputs, b.inputs[:, :n2]) and torch.equal(enc.targets, b.targets[:, n2 + 1 :])
    assert torch.equal(enc.labels["masked"], mask.reshape(500, -1))
    ref = MatrixCompletionWorld().reference_model()
    assert ref["causal"] is False and ref["context"] == n2 and "causal" not in w.reference_model()


def test_singular_value_shrinkage_closed_form():
    Y = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert torch.allclose(shrink_singular_values(Y, 2.0), torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)))


def test_svt_converges_to_its_closed_form():
    """SVT solves min τ‖X‖_* + ½‖X‖²_F s.t. the observed entries. For [[1, 1], [1, x]]: ‖X‖_* = 1 + x for x ≥ 1
    and √((x−1)² + 4) for x < 1, so the optimum has x = 1 − y with τ y/√(y² + 4) = 1 − y (→ 1, the nuclear-norm
    minimum, as τ → ∞)."""
    obs = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    known = torch.tensor([[True, True], [True, False]])
    for tau in (5.0, 20.0):
        y = brentq(lambda y, tau=tau: tau * y / (y * y + 4) ** 0.5 - (1 - y), 0.0, 1.0)
        X = svt_complete(obs, known, tau=tau, steps=3000)
        assert abs(X[1, 1].item() - (1 - y)) < 1e-4 and torch.allclose(X[known], obs[known], atol=1e-4)
    # fully observed: the constraint forces X = M
    M = torch.randn(4, 5, generator=make_generator(0), dtype=torch.float64)
    assert torch.allclose(svt_complete(M, torch.ones(4, 5, dtype=torch.bool), steps=1000), M, atol=1e-3)


@pytest.mark.parametrize("layout", ["copy", "encoder"])
def test_evaluate_perfect_and_plateau_predictors(layout):
    w = MatrixCompletionWorld(MatrixCompletionConfig(layout=layout))
    b = w.sample(64, generator=make_generator(1))
    at = w.config.first_target
    true_ids = b.inputs.clone()
    true_ids[:, at:] = b.targets[:, at:]
    perfect = torch.nn.functional.one_hot(true_ids, len(w.vocab)).double() * 50
    m = w.evaluate(perfect, b)
    assert m["masked_mse"] < 1e-12 and m["masked_acc"] == 1.0 and m["observed_mse"] < 1e-12
    zero = torch.zeros_like(perfect)
    zero[..., int(w.tokenize(torch.tensor(0.0)))] = 50  # always predict 0: the plateau predictor
    M, mask = b.labels["matrix"].double(), b.labels["mask"]
    assert w.evaluate(zero, b)["masked_mse"] == pytest.approx(float((M[mask] ** 2).mean()))


def test_mse_training_loss_is_the_squared_error_of_the_expected_value():
    """loss="mse": the mean over scored entries of (Σ_v softmax(logits)_v · v − M)², checked by a loop; loss="ce"
    leaves the trainer's cross-entropy (training_loss None), which the trainer then uses."""
    from assay.models.train import batch_loss, sequence_loss

    for loss_on in ("all", "masked"):
        w = MatrixCompletionWorld(MatrixCompletionConfig(loss_on=loss_on))
        b = w.sample(8, generator=make_generator(2))
        logits = torch.randn(*b.inputs.shape, len(w.vocab), generator=make_generator(3), dtype=torch.float64)
        M, mask = b.labels["matrix"].double(), b.labels["mask"]
        errs = []
        for i in range(8):
            for j in range(25):
                if loss_on == "all" or mask[i].flatten()[j]:
                    p = torch.softmax(logits[i, j, 5:], -1)
                    errs.append((sum(float(p[t]) * (t - 20) / 10 for t in range(41)) - M[i].flatten()[j].item()) ** 2)
        assert batch_loss(logits, b, w).item() == pytest.approx(sum(errs) / len(errs), rel=1e-9)
    ce = MatrixCompletionWorld(MatrixCompletionConfig(loss="ce"))
    assert ce.training_loss is None
    assert batch_loss(logits, b, ce) == sequence_loss(logits, b.targets)
    assert registry.make("matrix_completion", size=4, rank=1).config.rank == 1


@pytest.mark.parametrize("kw, match", [
    ({"rank": 6}, "rank must lie in"),
    ({"mask_prob": 0.0}, "mask_prob"),
    ({"value_max": 1.0}, "value_max"),
    ({"size": 1}, "size"),
    ({"layout": "decoder"}, "layout"),
    ({"loss": "l1"}, "loss"),
])
def test_impossible_configs_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        MatrixCompletionConfig(**kw)
