import json
import time

import pytest
import torch
from test_train import CountConfig, CountWorld

from assay.config import ConfigError
from assay.models.train import evaluate
from assay.models.transformer import Transformer
from assay.models.zoo import cache_root, reference_configs, world_model
from assay.worlds.base import make_generator


class RefCountWorld(CountWorld):
    """The stand-in world with a reference_model() in the same format the real worlds use."""

    def reference_model(self):
        return {"n_layers": 1, "n_heads": 2, "d_model": 16, "context": 12, "steps": 60, "batch_size": 16,
                "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "eval_every": 20, "eval_size": 64, "betas": (0.9, 0.95)}


def test_train_once_then_load_from_cache(tmp_path):
    world = RefCountWorld()
    first = world_model(world, cache_dir=tmp_path, progress=False)
    assert first.trained and first.path.parent == tmp_path / "world_models" and first.path.is_dir()
    assert not list(first.path.parent.glob(".partial-*"))  # checkpoints cleaned up after success
    # the trained model beats its own untrained initialisation on held-out data
    untrained = Transformer(first.model.config, generator=make_generator(0))
    held_out = world.sample(128, generator=make_generator(1234))
    before, after = evaluate(untrained, world, held_out), evaluate(first.model, world, held_out)
    assert after["eval_loss"] < 0.6 * before["eval_loss"]
    assert after["accuracy"] > before["accuracy"]
    assert set(first.metrics) == {"step", "eval_loss", "accuracy"}

    start = time.perf_counter()
    second = world_model(RefCountWorld(), cache_dir=tmp_path, progress=False)
    assert not second.trained and second.path == first.path and second.metrics == first.metrics
    assert not second.model.training
    for (name, p), q in zip(first.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name
    assert time.perf_counter() - start >= 0  # (load time is measured in the benchmark, not asserted)
    doc = json.loads((first.path / "config.json").read_text())
    assert doc["kind"] == "world_model" and doc["config"]["train"]["beta2"] == 0.95


def test_cache_key_changes_with_every_config(tmp_path):
    base = world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 2})
    variants = [
        world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 3}),
        world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 2}, seed=1),
        world_model(RefCountWorld(), cache_dir=tmp_path, progress=False,
                    train_overrides={"steps": 2}, model_overrides={"d_model": 8}),
        world_model(RefCountWorld(CountConfig(length=10)), cache_dir=tmp_path, progress=False,
                    train_overrides={"steps": 2}),
    ]
    paths = {base.path, *(v.path for v in variants)}
    assert len(paths) == 5 and all(v.trained for v in variants)
    assert not torch.equal(base.model.embed.weight, variants[1].model.embed.weight)  # seed changes init


def test_cache_key_of_default_models_ignores_the_compiled_weight_options():
    """norm/act/causal at their defaults leave the key as it was before the options existed (a hash of the
    config dict without them); any other value changes it."""
    import dataclasses
    import hashlib

    from assay import __version__
    from assay.config import to_dict
    from assay.models.zoo import cache_key

    world = RefCountWorld()
    model_cfg, train_cfg = reference_configs(world, seed=0)
    old = {k: v for k, v in to_dict(model_cfg).items() if k not in ("norm", "act", "causal")}
    doc = {"world": "w", "world_class": f"{type(world).__module__}.{type(world).__qualname__}",
           "world_config": to_dict(world.config), "model": old, "train": to_dict(train_cfg), "seed": 0,
           "version": __version__}
    assert cache_key("w", world, model_cfg, train_cfg, 0) == hashlib.sha256(
        json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    keys = {cache_key("w", world, dataclasses.replace(model_cfg, **kw), train_cfg, 0)
            for kw in ({}, {"norm": "none"}, {"act": "relu"}, {"causal": False})}
    assert len(keys) == 4


def test_retrain_and_corrupted_cache(tmp_path):
    a = world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 3})
    (a.path / "weights.safetensors").write_bytes(b"garbage")
    b = world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 3})
    assert b.trained and b.path == a.path
    c = world_model(RefCountWorld(), cache_dir=tmp_path, progress=False, train_overrides={"steps": 3}, retrain=True)
    assert c.trained
    for p, q in zip(b.model.parameters(), c.model.parameters()):
        assert torch.equal(p, q)  # training is deterministic


def test_reference_configs_routing_and_errors():
    model_cfg, train_cfg = reference_configs(RefCountWorld(), seed=7)
    assert model_cfg.vocab_size == 9 and model_cfg.d_model == 16
    assert (train_cfg.beta1, train_cfg.beta2, train_cfg.seed, train_cfg.steps) == (0.9, 0.95, 7, 60)
    assert train_cfg.checkpoint_every == 100
    with pytest.raises(ConfigError, match="unknown model/training setting"):
        reference_configs(RefCountWorld(), model_overrides={"n_layer": 3})
    with pytest.raises(ConfigError, match="unknown world"):
        world_model("no-such-world", progress=False)
    with pytest.raises(ConfigError, match="only apply when the world is given by name"):
        world_model(RefCountWorld(), world_overrides={"length": 3}, progress=False)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "world_models"
    assert cache_root(tmp_path / "x") == tmp_path / "x" / "world_models"


def test_registry_world_by_name(tmp_path):
    wm = world_model("dyck", cache_dir=tmp_path, progress=False,
                     model_overrides={"d_model": 16, "context": 16, "n_layers": 1},
                     train_overrides={"steps": 3, "batch_size": 4, "eval_size": 8})
    assert wm.trained and wm.path.name.startswith("dyck-")
    assert wm.model.config.vocab_size == len(wm.world.vocab)
    assert wm.world.acceptance[0] in wm.metrics


def test_cli_world_train_trains_then_loads(tmp_path):
    from typer.testing import CliRunner

    from assay.cli import app

    args = ["world", "train", "dyck", "--steps", "2", "--model", "d_model=16", "--model", "context=16",
            "--model", "n_layers=1", "--train", "batch_size=4", "--train", "eval_size=8",
            "--cache-dir", str(tmp_path), "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("trained: ") and "close_acc = " in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and second.output.startswith("loaded from cache: ")
    bad = CliRunner().invoke(app, [*args, "--model", "d_modle=3"])
    assert bad.exit_code != 0 and "unknown model/training setting" in bad.output


def test_interrupted_first_training_resumes_exactly(tmp_path):
    from assay.models.train import train
    from assay.models.zoo import cache_key

    over = {"steps": 10, "checkpoint_every": 5, "eval_every": 5}
    world = RefCountWorld()
    model_cfg, train_cfg = reference_configs(world, train_overrides=over)
    partial = tmp_path / "a" / "world_models" / f".partial-refcountworld-{cache_key('refcountworld', world, model_cfg, train_cfg, 0)}"

    def crash(entry):
        if entry["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # dies after the step-5 checkpoint, before step 10's
        train(Transformer(model_cfg, generator=make_generator(0)), world, train_cfg, checkpoint_dir=partial,
              on_eval=crash)
    assert [p.name for p in partial.iterdir()] == ["step-0000005"]
    resumed = world_model(world, cache_dir=tmp_path / "a", progress=False, train_overrides=over)
    straight = world_model(world, cache_dir=tmp_path / "b", progress=False, train_overrides=over)
    assert resumed.trained and not partial.exists()
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)
