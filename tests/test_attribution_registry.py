"""The attribution registry: one table of methods from which the CLI, the bench family and the text module read,
and capability constants on each config class that agree with what the method actually does."""

import dataclasses
import inspect
import typing

import pytest
import torch

from assay.attribution.registry import ENGINE_METHODS, METHODS, configure, lookup
from assay.bench.attribution import FAMILY, method_params
from assay.bench.real_model_attribution import AttributeCommand
from assay.config import ConfigError

CAPABILITIES = ("uses_baseline", "feature_groups", "complete", "stochastic")


def _net():
    # a smooth net with feature interactions, so no method is exact by accident
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


X = torch.tensor([[0.9, -1.2, 0.4, 1.5, -0.3, 0.7]], dtype=torch.float64)


def _run(name, **kwargs):
    cfg = ENGINE_METHODS[name].config(**kwargs.pop("config", {}))
    return ENGINE_METHODS[name].run(_net(), X, 0, config=cfg, **kwargs)


def test_every_method_is_exported_from_the_package():
    import assay.attribution as pkg
    from assay.attribution import FullGradConfig, GradCamConfig, fullgrad, gradcam

    assert (METHODS["fullgrad"].run, METHODS["gradcam"].run) == (fullgrad, gradcam)
    assert (METHODS["fullgrad"].config, METHODS["gradcam"].config) == (FullGradConfig, GradCamConfig)
    for name, entry in METHODS.items():
        for obj in (entry.run, entry.config):
            assert getattr(pkg, obj.__name__) is obj and obj.__name__ in pkg.__all__, (name, obj)


def test_each_entry_is_named_by_its_config_and_function():
    for name, entry in METHODS.items():
        assert entry.name == entry.config.name == name == entry.run.__name__
        assert entry.config.budget_field is None or entry.config.budget_field in {
            f.name for f in dataclasses.fields(entry.config)}
    assert set(ENGINE_METHODS) == set(METHODS) - {"fullgrad", "gradcam"}


def test_the_cli_and_the_bench_family_read_the_registry():
    hints = typing.get_type_hints(AttributeCommand)
    assert typing.get_args(hints["method"]) == tuple(METHODS)
    assert FAMILY.method_names() == FAMILY.methods == (*METHODS, "diet", "random")
    # a method's spec parameters are its config's fields (seed and output come from the bench)
    for name, entry in METHODS.items():
        own = {f.name for f in dataclasses.fields(entry.config) if f.init} - {"seed", "output"}
        assert set(method_params(name)) == own | ({"patch"} if entry.config.feature_groups else set()), name
    assert method_params("integrated_gradients")["steps"] == 32 and method_params("lime")["n_samples"] == 200


def test_lookup_and_configure():
    with pytest.raises(ValueError, match="unknown attribution method 'shap'.*kernel_shap"):
        lookup("shap")
    with pytest.raises(ValueError, match="fullgrad"):  # not an engine method
        lookup("fullgrad", ENGINE_METHODS)
    shared = {"steps": 7, "n_samples": 11, "seed": 3, "output": "log_softmax", "layer": "0"}
    ig, sg, lime, grad, cam = (configure(n, **shared) for n in ("integrated_gradients", "smoothgrad", "lime",
                                                                  "gradient", "gradcam"))
    assert (ig.steps, ig.output) == (7, "log_softmax")
    assert (sg.n_samples, sg.seed) == (7, 3)  # a gradient method's budget is `steps`
    assert (lime.n_samples, lime.seed) == (11, 3)  # a feature-group method's is `n_samples`
    assert grad == METHODS["gradient"].config(output="log_softmax")
    assert cam.layer == "0"
    with pytest.raises(TypeError, match="stepz"):
        configure("gradient", stepz=3)
    with pytest.raises(ConfigError, match="layer"):
        configure("gradcam", layer=None)


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_uses_baseline_agrees_with_behaviour(name):
    takes = "baseline" in inspect.signature(ENGINE_METHODS[name].run).parameters
    assert takes == ENGINE_METHODS[name].config.uses_baseline
    if takes:
        a, b = _run(name, baseline=0.0), _run(name, baseline=0.5)
        assert not torch.allclose(a.values, b.values)
        assert torch.isfinite(a.baseline_output).all() and a.baseline_output != b.baseline_output
    else:
        assert _run(name).baseline_output.isnan().all()


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_feature_groups_agrees_with_behaviour(name):
    takes = "feature_mask" in inspect.signature(ENGINE_METHODS[name].run).parameters
    assert takes == ENGINE_METHODS[name].config.feature_groups
    if takes:  # three groups of two features: one score per group, written to both members
        mask = torch.tensor([0, 0, 1, 1, 2, 2])
        v = _run(name, feature_mask=mask).values[0]
        assert torch.equal(v[0::2], v[1::2]) and v.unique().numel() == 3
    else:  # every feature gets its own score
        assert _run(name).values[0].unique().numel() == 6


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_complete_agrees_with_behaviour(name):
    a = _run(name, config={"n_samples": 2000} if name == "kernel_shap" else {})
    delta = float(a.output[0] - a.baseline_output[0])
    gap = float(a.completeness_gap[0])
    if ENGINE_METHODS[name].config.complete:
        assert abs(gap) < 1e-3 * abs(delta)
    elif ENGINE_METHODS[name].config.uses_baseline:
        assert abs(gap) > 1e-2 * abs(delta)  # on a net with interactions the scores do not add up
    else:
        assert gap != gap  # NaN: no reference input to complete against


@pytest.mark.parametrize("name", list(ENGINE_METHODS))
def test_stochastic_agrees_with_behaviour(name):
    cls = ENGINE_METHODS[name].config
    has_seed = "seed" in {f.name for f in dataclasses.fields(cls)}
    assert has_seed == cls.stochastic
    same = _run(name).values
    torch.testing.assert_close(_run(name).values, same, rtol=0, atol=1e-12)  # a fixed seed reproduces (LAPACK: last bit)
    if cls.stochastic:
        assert not torch.allclose(_run(name, config={"seed": 1}).values, same)
