"""Checkpoint series: log-spaced steps (spec §1.1 check), one artifact, exact resume after a kill,
identical curves, and the error for a series whose models differ in shape."""

from __future__ import annotations

import pytest
import torch
from test_train import MODEL_CFG, WORLD, fresh, small

from assay.artifact import ArtifactError
from assay.dynamics.checkpoints import (
    evaluate_series,
    load_series,
    log_steps,
    make_series,
    save_series,
    train_series,
)
from assay.models.mlp import MLP
from assay.models.train import sequence_loss, train
from assay.worlds.base import make_generator


def test_log_steps_spec_check():
    assert log_steps(3000, 20, 10) == (0, 10, 14, 18, 25, 33, 45, 61, 82, 110, 149, 201, 272, 367, 495, 669, 903,
                                       1219, 1646, 2222, 3000)


class Kill(Exception):
    pass


def test_series_resumes_after_a_kill_with_identical_checkpoints_and_curves(tmp_path):
    cfg = small(steps=40, eval_every=10)
    steps = sorted(set(log_steps(40, 6, 2)) | {10, 20, 30})
    straight = train_series(fresh(), WORLD, cfg, tmp_path / "a", steps=steps, world_name="count")

    def kill(entry):
        if entry["step"] == 30:
            raise Kill

    with pytest.raises(Kill):
        train_series(fresh(), WORLD, cfg, tmp_path / "b", steps=steps, on_eval=kill)
    assert not (tmp_path / "b").exists() and (tmp_path / ".partial-b").is_dir()
    # resumed with a differently initialised model: the checkpoints restore everything
    train_series(fresh(seed=7), WORLD, cfg, tmp_path / "b", steps=steps)
    assert not (tmp_path / ".partial-b").exists()
    a, b = load_series(tmp_path / "a"), load_series(tmp_path / "b")
    assert a.steps == b.steps == straight.steps == tuple(steps)
    for sa, sb in zip(a.states, b.states):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.meta["losses"] == b.meta["losses"] and len(a.meta["losses"]) == 40
    assert a.config["world_name"] == "count" and a.config["model"]["d_model"] == MODEL_CFG.d_model

    batch = WORLD.sample(cfg.eval_size, generator=make_generator(cfg.seed + 1))  # train()'s held-out batch

    def eval_loss(model):
        return float(sequence_loss(model(batch.inputs), batch.targets))

    curve_a, curve_b = evaluate_series(a, eval_loss), evaluate_series(b, eval_loss)
    assert curve_a == curve_b
    # independent check: the checkpoint at step s is the model train() evaluated at step s
    by_step = dict(curve_a)
    for entry in a.meta["history"]:
        assert by_step[int(entry["step"])] == pytest.approx(entry["eval_loss"], abs=1e-6)
    # and step 0 holds the initial weights
    init = fresh().state_dict()
    assert all(torch.equal(a.states[0][k], init[k]) for k in init)
    # and the final checkpoint equals plain training
    plain = train(fresh(), WORLD, cfg).model.state_dict()
    assert all(torch.equal(a.states[-1][k], plain[k]) for k in plain)


def test_series_of_models_with_different_shapes_is_refused(tmp_path):
    small_mlp = MLP(4, (8,), 2, generator=make_generator(0)).state_dict()
    wide_mlp = MLP(4, (9,), 2, generator=make_generator(0)).state_dict()
    with pytest.raises(ValueError, match=r"same shapes.*step 5.*'fc0\.weight'"):
        make_series([0, 5], [small_mlp, wide_mlp])
    with pytest.raises(ValueError, match="strictly increasing"):
        make_series([5, 5], [small_mlp, small_mlp])
    series = make_series([0, 5], [small_mlp, small_mlp])
    save_series(tmp_path / "s", series)
    loaded = load_series(tmp_path / "s")
    assert loaded.steps == (0, 5) and torch.equal(loaded.states[1]["fc0.weight"], small_mlp["fc0.weight"])
    with pytest.raises(ValueError, match="no transformer config"):
        evaluate_series(loaded, lambda m: 0.0)
    curve = evaluate_series(loaded, lambda m: float(m.fc0.bias.sum()), model=MLP(4, (8,), 2))
    total = pytest.approx(float(small_mlp["fc0.bias"].sum()))
    assert curve == [(0, total), (5, total)]
    with pytest.raises(ValueError, match="fc0.weight"):
        evaluate_series(loaded, lambda m: 0.0, model=MLP(4, (9,), 2))
    (tmp_path / "s" / "step-0000005.safetensors").write_bytes(b"broken")
    with pytest.raises(ArtifactError, match="checksum"):
        load_series(tmp_path / "s")
