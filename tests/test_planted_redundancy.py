"""The planted-redundancy MLP's truth, checked against its weights and its activations."""

import pytest
import torch

from assay.hooks import capture
from assay.models.planted_redundancy import PlantedRedundancyConfig, planted_redundancy_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def _incoming(model) -> torch.Tensor:
    return torch.cat([model.fc0.weight, model.fc0.bias[:, None]], dim=1).detach()


def test_truth_matches_the_weights():
    cfg = PlantedRedundancyConfig()
    model, truth = planted_redundancy_mlp(cfg, seed=3)
    w = _incoming(model)
    assert w.shape == (cfg.hidden, cfg.d_in + 1)
    assert truth.kind.count("exact") == cfg.n_exact and truth.kind.count("scaled") == cfg.n_scaled
    for src, j in truth.pairs("exact"):
        assert torch.equal(w[j], w[src])
    for src, j in truth.pairs("scaled"):
        a = float(truth.scale[j])
        assert cfg.scale_range[0] <= a <= cfg.scale_range[1]
        torch.testing.assert_close(w[j], a * w[src], rtol=0, atol=1e-6)
    levels = []
    for src, j in truth.pairs("noisy"):
        d = w[j] - w[src]
        assert abs(float(d @ w[src])) < 1e-6  # the noise is orthogonal to the source
        assert float(d.norm() / w[src].norm()) == pytest.approx(float(truth.noise[j]), rel=1e-5)
        levels.append(float(truth.noise[j]))
    assert sorted(levels) == pytest.approx(sorted(cfg.noise_levels))
    sources = [s for s, _ in truth.pairs()]
    assert len(set(sources)) == len(sources) and all(truth.kind[s] == "base" for s in sources)
    base = w[[i for i, k in enumerate(truth.kind) if k == "base"]]
    torch.testing.assert_close(base @ base.T, torch.eye(cfg.n_base), rtol=0, atol=1e-5)
    rms = model.out.weight.detach().pow(2).mean(0).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, cfg.out_rms))


def test_copies_have_the_planted_activations():
    model, truth = planted_redundancy_mlp(seed=0)
    x = torch.randn(256, model.fc0.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(model, ["act0"]) as acts:
        model(x)
    h = acts["act0"]
    assert (h > 0).float().mean() > 0.2  # the hidden layer is alive
    for src, j in truth.pairs("exact", "scaled"):
        torch.testing.assert_close(h[:, j], truth.scale[j] * h[:, src], rtol=1e-5, atol=1e-6)
    for src, j in truth.pairs("noisy"):
        assert not torch.allclose(h[:, j], h[:, src], atol=1e-4)


def test_same_seed_same_model_and_shuffled_layout():
    (m1, t1), (m2, t2), (m3, t3) = (planted_redundancy_mlp(seed=s) for s in (5, 5, 6))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert t1.kind == t2.kind and torch.equal(t1.source, t2.source)
    assert t1.kind != t3.kind or not torch.equal(t1.source, t3.source)
    assert t1.kind[-3:] != ("noisy",) * 3 or t3.kind[-3:] != ("noisy",) * 3  # copies are not all at the end


@pytest.mark.parametrize("kwargs, match", [
    ({"n_base": 20}, "n_base"),
    ({"n_exact": 9}, "distinct sources"),
    ({"noise_levels": (0.0,)}, "noise_levels"),
    ({"scale_range": (-1.0, 2.0)}, "scale_range"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlantedRedundancyConfig(**kwargs)


def test_unknown_kind_is_refused():
    _, truth = planted_redundancy_mlp(seed=0)
    with pytest.raises(ValueError, match="unknown copy kinds"):
        truth.pairs("twin")
