"""Probes and steering vectors as artifacts: save → load is bitwise identical (weights, scores, steering effect),
provenance (on/off-policy) round-trips, and tampered or mismatched artifacts are refused with what is wrong."""

import json

import pytest
import torch

from assay.artifact import ArtifactError, save_artifact
from assay.config import ConfigError
from assay.lenses.artifacts import (
    Provenance,
    load_probe,
    load_steering_vectors,
    save_probe,
    save_steering_vectors,
)
from assay.lenses.probes import diff_of_means, logistic
from assay.lenses.steering import steer

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed=0, n=40, d=6):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g) + 1.5 * y[:, None] * torch.eye(d)[0]
    return x, y


def _prov(**kw):
    base = dict(model="tiny", data="planted Gaussian rows", policy="off", site="model.layers.0", pooling="last",
                n_examples=40, labels="class 1")
    return Provenance(**{**base, **kw})


@pytest.mark.parametrize("fit", [logistic, diff_of_means])
def test_probe_round_trip_is_bitwise(tmp_path, fit):
    x, y = _data()
    probe = fit(x, y)
    prov = _prov()
    save_probe(tmp_path / "p", probe, provenance=prov, meta={"cv_auroc": 0.9})
    saved = load_probe(tmp_path / "p")
    assert torch.equal(saved.probe.w, probe.w) and torch.equal(saved.probe.b, probe.b)
    assert saved.probe.method == probe.method and saved.config.d_model == 6
    assert torch.equal(saved.probe.score(x), probe.score(x))
    assert saved.config.provenance == prov and saved.meta == {"cv_auroc": 0.9}
    doc = json.loads((tmp_path / "p" / "config.json").read_text())
    assert doc["kind"] == "lens.probe" and doc["config"]["provenance"]["policy"] == "off"


def test_on_policy_provenance_round_trips_and_is_checked(tmp_path):
    x, y = _data(1)
    on = _prov(policy="on", data="the model's own completions of 40 prompts", generator="tiny")
    save_probe(tmp_path / "on", logistic(x, y), provenance=on)
    assert load_probe(tmp_path / "on").config.provenance.policy == "on"
    with pytest.raises(ConfigError, match="use policy='off'"):
        _prov(policy="on", generator="another-model")
    with pytest.raises(ConfigError, match="n_examples"):
        _prov(n_examples=0)


def test_steering_vectors_round_trip_and_steer_identically(tmp_path, llama):
    g = torch.Generator().manual_seed(2)
    vecs = {"caa": torch.randn(32, generator=g), "probe": torch.randn(32, generator=g)}
    prov = _prov(site="model.layers.0", n_examples=20)
    save_steering_vectors(tmp_path / "v", vecs, provenance=prov, meta={"caa_norm": 1.0})
    saved = load_steering_vectors(tmp_path / "v")
    assert list(saved.vectors) == ["caa", "probe"] and saved.site == "model.layers.0"
    assert all(torch.equal(saved.vectors[k], v) for k, v in vecs.items())
    ids = torch.randint(4, 64, (2, 5), generator=g)
    with torch.no_grad():
        with steer(llama, {"model.layers.0": vecs["caa"]}, strength=2.0):
            want = llama(ids).logits
        with steer(llama, {saved.site: saved.vectors["caa"]}, strength=2.0):
            got = llama(ids).logits
    assert torch.equal(got, want)


def test_bad_artifacts_are_refused(tmp_path):
    x, y = _data()
    save_probe(tmp_path / "p", logistic(x, y), provenance=_prov())
    with pytest.raises(ArtifactError, match="holds a 'lens.probe' artifact, expected 'lens.steering'"):
        load_steering_vectors(tmp_path / "p")
    # a probe whose weight does not match its declared width
    save_artifact(tmp_path / "w", kind="lens.probe", tensors={"w": torch.zeros(3), "b": torch.zeros(())},
                  config={"method": "logistic", "d_model": 6, "provenance": {**json.loads(
                      (tmp_path / "p" / "config.json").read_text())["config"]["provenance"]}})
    with pytest.raises(ArtifactError, match=r"'w' is \(3,\).*shape \(6,\)"):
        load_probe(tmp_path / "w")
    # provenance missing a field
    save_artifact(tmp_path / "np", kind="lens.probe", tensors={"w": torch.zeros(6), "b": torch.zeros(())},
                  config={"method": "logistic", "d_model": 6, "provenance": {"model": "tiny"}})
    with pytest.raises(ArtifactError, match="invalid lens.probe config"):
        load_probe(tmp_path / "np")
    # a vector the config does not name
    save_artifact(tmp_path / "extra", kind="lens.steering", tensors={"caa": torch.ones(4), "x": torch.ones(4)},
                  config={"names": ["caa"], "d_model": 4, "provenance": json.loads(
                      (tmp_path / "p" / "config.json").read_text())["config"]["provenance"]})
    with pytest.raises(ArtifactError, match="unexpected tensor"):
        load_steering_vectors(tmp_path / "extra")
    with pytest.raises(ValueError, match="one width"):
        save_steering_vectors(tmp_path / "mixed", {"a": torch.ones(3), "b": torch.ones(4)}, provenance=_prov())
    with pytest.raises(ValueError, match="at least one"):
        save_steering_vectors(tmp_path / "none", {}, provenance=_prov())
