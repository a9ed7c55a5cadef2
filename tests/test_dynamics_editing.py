"""ROME rank-one edit and fine-tuning edit (Meng et al. 2022; Nishi et al. 2025) against closed forms."""

from __future__ import annotations

import pytest
import torch

from assay.config import ConfigError
from assay.dynamics.editing import (
    EditRequest,
    FineTuneConfig,
    RomeConfig,
    fine_tune_edit,
    key_covariance,
    mlp_keys,
    rank_one_update,
    rome_edit,
    target_probability,
)
from assay.models.transformer import Transformer, TransformerConfig


def _spd(d: int, seed: int) -> torch.Tensor:
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return A @ A.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_rank_one_update_spec_check_values():
    W, k, v = torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 0], dtype=torch.float64), torch.tensor(
        [0.0, 1], dtype=torch.float64)
    W1 = rank_one_update(W, k, v, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(W1, torch.tensor([[0.0, 0], [1, 1]], dtype=torch.float64))
    W2 = rank_one_update(W, k, v, torch.tensor([[2.0, 1], [1, 2]], dtype=torch.float64))
    torch.testing.assert_close(W2, torch.tensor([[0.0, 0.5], [1, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(W2 @ torch.tensor([0.0, 1], dtype=torch.float64), torch.tensor([0.5, 0.5],
                                                                                           dtype=torch.float64))


def test_rank_one_update_inserts_the_key_and_spares_c_inverse_orthogonal_keys():
    g = torch.Generator().manual_seed(0)
    d_out, d_in = 5, 7
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    k, v = torch.randn(d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)
    C = _spd(d_in, 1)
    W1 = rank_one_update(W, k, v, C)
    torch.testing.assert_close(W1 @ k, v, atol=1e-12, rtol=0)
    u = torch.linalg.solve(C, k)
    others = torch.randn(d_in, 20, generator=g, dtype=torch.float64)
    others = others - torch.outer(k, u @ others) / (u @ k)  # kᵀC⁻¹k' = 0 for every column
    torch.testing.assert_close(W1 @ others, W @ others, atol=1e-12, rtol=0)
    # ROME's update is the least change in the C-metric, tr(ΔW C ΔWᵀ), among all ΔW with ΔW k = v − W k
    dW = W1 - W
    E = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    E = E - torch.outer(E @ k, k) / (k @ k)  # E k = 0: W1 + E also inserts the key
    cost = lambda D: torch.trace(D @ C @ D.T)  # noqa: E731
    assert cost(dW + E) > cost(dW)


def test_key_covariance_adds_a_ridge_only_when_keys_are_few():
    K = torch.randn(100, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(key_covariance(K), K.double().T @ K.double() / 100)
    few = K[:10]
    C = few.double().T @ few.double() / 10
    torch.testing.assert_close(key_covariance(few), C + 1e-4 * torch.trace(C) / 4 * torch.eye(4, dtype=torch.float64))


def _model_and_request(seed: int = 0):
    model = Transformer(TransformerConfig(vocab_size=12, n_layers=2, d_model=16, n_heads=2, context=8),
                        generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():  # GPT-2 init gives logits of ±0.1, which no edit of one MLP can push to P ≥ 0.9
        for p in model.parameters():
            p.mul_(10.0 if p.ndim == 2 else 1.0)
        model.unembed.weight.mul_(5.0)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(4, 12, (5, 6), generator=g)
    tokens[:, 4] = 7  # the subject, in 5 contexts
    kl = tokens.clone()
    kl[:, 5] = 9  # another relation of the same subject
    return model, EditRequest(tokens=tokens, key_position=4, target=11, kl_tokens=kl)


def test_rome_edit_writes_v_star_at_k_star_and_leaves_the_input_model_alone():
    model, req = _model_and_request()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = rome_edit(model, req, key_covariance(torch.randn(400, 64, generator=torch.Generator().manual_seed(3))),
                    RomeConfig(layer=0))
    fc = res.model.blocks[0].mlp.fc_out
    # closed form: the edited projection maps k* to v* (float32 weights)
    torch.testing.assert_close(fc(res.key.float()).double(), res.value, atol=1e-4, rtol=1e-4)
    # the key is the MLP's hidden activation at the subject, averaged over the contexts
    torch.testing.assert_close(res.key.float(), mlp_keys(model, 0, req.tokens)[:, 4].mean(0), atol=1e-6, rtol=1e-6)
    assert res.delta_weight.norm() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    changed = [k for k, v in res.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == ["blocks.0.mlp.fc_out.weight"]
    assert res.target_prob > target_probability(model, req.tokens, req.target)


def test_fine_tune_edit_makes_the_new_object_the_prediction():
    model, req = _model_and_request(1)
    assert not (model(req.tokens)[:, -1].argmax(-1) == req.target).all()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fine_tune_edit(model, req, FineTuneConfig(layer=1, lr=0.05, max_steps=200, target_prob=0.9))
    assert res.target_prob >= 0.9
    with torch.no_grad():
        assert (res.model(req.tokens)[:, -1].argmax(-1) == req.target).all()
    changed = [k for k, v in res.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == ["blocks.1.mlp.fc_out.weight"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in res.model.parameters())


def test_clear_errors():
    model, req = _model_and_request()
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        fine_tune_edit(model, req, FineTuneConfig(layer=5))
    with pytest.raises(ConfigError, match="last block"):
        rome_edit(model, req, torch.eye(64), RomeConfig(layer=1))
    with pytest.raises(ValueError, match="cov must be"):
        rank_one_update(torch.zeros(2, 3), torch.ones(3), torch.ones(2), torch.eye(2))
    with pytest.raises(ValueError, match="key_position"):
        EditRequest(tokens=req.tokens, key_position=7, target=1)
    with pytest.raises(ConfigError):
        RomeConfig(lr=0)
