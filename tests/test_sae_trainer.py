"""SAE trainer: exact resume, lockstep SAEs, live hook training, bad input."""

import pytest
import torch
from torch import nn

from assay.artifact import ArtifactError
from assay.config import ConfigError
from assay.dictionaries.base import SAE
from assay.dictionaries.batches import live_batches
from assay.dictionaries.registry import build_sae
from assay.dictionaries.trainer import (
    NonFiniteActivationsError,
    SAETrainConfig,
    SAETrainer,
    lr_at,
    train_saes,
)
from assay.evaluate.recovery import feature_recovery
from assay.worlds.base import make_generator
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(start=0, n=8, B=64, d=16):
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(40, d, generator=g)
    out = []
    for _ in range(n):
        codes = torch.rand(B, 40, generator=g) * (torch.rand(B, 40, generator=g) < 0.1)
        out.append(codes @ basis + 0.5)
    return iter(out[start:])


def _saes():
    return [build_sae("topk", d_in=16, d_sae=64, k=4, seed=1), build_sae("jumprelu", d_in=16, d_sae=64, seed=2),
            build_sae("batchtopk", d_in=16, d_sae=64, k=4, threshold_start=2)]


CFG = SAETrainConfig(steps=6, warmup_steps=2, decay_fraction=0.5, sparsity_warmup_steps=3, lr=1e-3, dead_window=64)


def _assert_same(a, b):
    for sa, sb in zip(a, b):
        sda, sdb = sa.state_dict(), sb.state_dict()
        assert sda.keys() == sdb.keys()
        for k in sda:
            assert torch.equal(sda[k], sdb[k]), k


def test_lr_schedule():
    assert lr_at(0, 1.0, warmup=4, decay_start=None, total=10) == 0.25
    assert lr_at(5, 1.0, warmup=4, decay_start=None, total=10) == 1.0
    assert lr_at(8, 1.0, warmup=4, decay_start=6, total=10) == pytest.approx(0.5)


def test_decay_fraction_is_the_cli_meaning():
    """decay_fraction f: the lr decays linearly to 0 over the last f of the steps, as `--decay-fraction`."""
    assert CFG.decay_start == 3
    assert SAETrainConfig(steps=700, decay_fraction=0.2).decay_start == 560  # the measured run of docs/dictionaries.md
    assert SAETrainConfig(steps=10, decay_fraction=0.0).decay_start is None
    lrs = [lr_at(t, 1.0, warmup=0, decay_start=SAETrainConfig(steps=10, decay_fraction=0.4).decay_start, total=10)
           for t in range(10)]
    assert lrs[:6] == [1.0] * 6 and lrs[6:] == pytest.approx([4 / 4, 3 / 4, 2 / 4, 1 / 4])
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="decay_fraction must lie in"):
            SAETrainConfig(steps=10, decay_fraction=bad)
    with pytest.raises(ConfigError, match=r"SAETrainConfig.steps must be an integer, got float 10.5"):
        SAETrainConfig(steps=10.5)


def test_interrupted_and_resumed_equals_uninterrupted_bitwise(tmp_path):
    full, res_full = train_saes(_saes(), CFG, _data)
    ck = tmp_path / "ck"
    part = SAETrainConfig(**{**CFG.__dict__, "steps": 6, "checkpoint_every": 3})
    trainer = SAETrainer(_saes(), part)
    trainer.fit(_data(), checkpoint=ck)  # leaves a final checkpoint at 6; redo with an interruption
    interrupted = SAETrainer(_saes(), part)
    it = _data()
    for _ in range(3):
        interrupted.train_step(next(it))
    interrupted.save_checkpoint(tmp_path / "mid")
    resumed, res = train_saes(_saes(), CFG, _data, checkpoint=tmp_path / "mid")
    assert res.steps == 6 and res.input_scale == res_full.input_scale
    _assert_same(full, resumed)
    # resuming a finished run takes zero steps and returns identical weights
    again, res2 = train_saes(_saes(), CFG, _data, checkpoint=ck)
    assert res2.steps == 6
    _assert_same(full, again)
    # an iterable (not a factory) is skipped to the resume position
    skipped, _ = train_saes(_saes(), CFG, list(_data()), checkpoint=tmp_path / "mid", resume=True)
    _assert_same(full, skipped)


def test_lockstep_equals_separate_runs():
    together, _ = train_saes(_saes(), CFG, _data)
    for i, sae in enumerate(_saes()):
        alone, _ = train_saes(sae, CFG, _data)  # one SAE in, one SAE out
        assert isinstance(alone, SAE)
        _assert_same([together[i]], [alone])
    assert isinstance(together, list) and len(together) == 3  # a list in, a list out


def test_non_finite_batch_stops_with_step_named_and_checkpoint_intact(tmp_path):
    batches = list(_data())
    batches[4] = batches[4].clone()
    batches[4][7, 3] = float("nan")
    cfg = SAETrainConfig(steps=6, warmup_steps=1, lr=1e-3, checkpoint_every=2)
    trainer = SAETrainer(_saes()[:1], cfg)
    with pytest.raises(NonFiniteActivationsError, match="step 4"):
        trainer.fit(batches, checkpoint=tmp_path / "ck")
    back = SAETrainer(_saes()[:1], cfg)
    back.load_checkpoint(tmp_path / "ck")
    assert back.step == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="expect d_in=16"):
        train_saes(_saes()[:1], CFG, [torch.randn(8, 12)] * 6)
    trainer = SAETrainer(_saes()[:1], CFG)
    trainer.train_step(next(_data()))
    path = trainer.save_checkpoint(tmp_path / "ck")
    with open(path / "sae0.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match="corrupted"):
        SAETrainer(_saes()[:1], CFG).load_checkpoint(path)
    trainer.save_checkpoint(tmp_path / "ck2")
    with pytest.raises(ArtifactError, match="checkpoint holds SAEs"):
        SAETrainer(_saes()[1:2], CFG).load_checkpoint(tmp_path / "ck2")
    with pytest.raises(ValueError, match="data ran out"):
        train_saes(_saes()[:1], CFG, list(_data())[:2])


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 16)
        self.block = nn.Linear(16, 16)
        self.head = nn.Linear(16, 11)

    def forward(self, t):
        return self.head(torch.relu(self.block(self.embed(t))))


def test_live_hook_training_matches_precomputed_activations():
    torch.manual_seed(0)  # only for the toy model's default init; the library never seeds
    model = _Toy().eval()
    g = torch.Generator().manual_seed(1)
    tokens = [torch.randint(0, 11, (4, 9), generator=g) for _ in range(6)]
    live = list(live_batches(model, "block", tokens, batch_size=16))
    assert len(live) == 6 * 4 * 8 // 16 and live[0].shape == (16, 16)
    with torch.no_grad():
        direct = torch.cat([model.block(model.embed(t))[:, 1:].reshape(-1, 16) for t in tokens])
    torch.testing.assert_close(torch.cat(live), direct)
    cfg = SAETrainConfig(steps=5, warmup_steps=1, lr=1e-3)
    a, _ = train_saes(_saes()[:1], cfg, live_batches(model, "block", tokens, batch_size=16))
    b, _ = train_saes(_saes()[:1], cfg, live)
    _assert_same(a, b)


def test_on_step_watches_recovery_rise_without_changing_the_run():
    """on_step sees the SAEs as finalize would at that step: feature recovery on a superposition world
    (planted ground truth) rises over training, the copies take raw inputs (scale folded in), and the
    trained weights are bitwise those of a run without the callback."""
    world = SuperpositionWorld(SuperpositionConfig(n_features=32, d_model=16, p_max=0.3, p_min=0.05))

    def data(start):
        g = make_generator(1000 + start)
        while True:
            yield world.sample(256, generator=g).inputs * 7.0  # a scale the trainer normalises away

    cfg = SAETrainConfig(steps=200, warmup_steps=10, lr=5e-3)
    seen: dict[int, float] = {}
    x = world.sample(512, generator=make_generator(3)).inputs * 7.0
    fvu: dict[int, float] = {}

    def watch(step, saes):
        (sae,) = saes
        assert not sae.training
        seen[step] = feature_recovery(sae.W_dec.detach(), world.directions).mcc
        with torch.no_grad():  # raw (unscaled) inputs reconstruct: the input scale is folded in
            fvu[step] = ((sae.decode(sae.encode(x)) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()

    watched, _ = train_saes(build_sae("topk", d_in=16, d_sae=64, k=4, seed=0), cfg, data, on_step=watch,
                            on_step_at=50)
    assert sorted(seen) == [50, 100, 150, 200]
    mcc = [seen[t] for t in sorted(seen)]
    assert mcc[-1] > mcc[0] + 0.1 and mcc[-1] >= 0.9, mcc
    assert fvu[200] < 0.2 and fvu[200] < fvu[50], fvu
    assert seen[200] == feature_recovery(watched.W_dec.detach(), world.directions).mcc  # last call = result
    plain, _ = train_saes(build_sae("topk", d_in=16, d_sae=64, k=4, seed=0), cfg, data)
    _assert_same([watched], [plain])


def test_on_step_after_resume_runs_for_the_remaining_steps_only(tmp_path):
    interrupted = SAETrainer(_saes(), CFG)
    it = _data()
    for _ in range(3):
        interrupted.train_step(next(it))
    interrupted.save_checkpoint(tmp_path / "mid")
    steps: list[int] = []
    resumed, _ = train_saes(_saes(), CFG, _data, checkpoint=tmp_path / "mid",
                            on_step=lambda t, saes: steps.append(t), on_step_at=range(1, 100))
    assert steps == [4, 5, 6]
    full, _ = train_saes(_saes(), CFG, _data, on_step=lambda t, saes: steps.append(t), on_step_at={2, 6})
    assert steps == [4, 5, 6, 2, 6]
    _assert_same(full, resumed)
    with pytest.raises(ValueError, match="start at 1"):
        train_saes(_saes(), CFG, _data, on_step=print, on_step_at=[0, 3])
    with pytest.raises(ValueError, match="positive step interval"):
        train_saes(_saes(), CFG, _data, on_step=print, on_step_at=0)


def test_finite_check_and_batch_spread_match_their_plain_definitions():
    from assay.dictionaries.trainer import _all_finite, _sum_sq_deviations

    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 24, generator=g) * 3 + 5  # an offset mean, as activations have
    assert _all_finite(x) and _all_finite(x[:0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[123, 7] = bad
        assert not _all_finite(y)
    want = (x.double() - x.double().mean(0)).pow(2).sum()  # Σ_b ‖x_b − x̄‖² in float64
    torch.testing.assert_close(_sum_sq_deviations(x).double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(_sum_sq_deviations(x), x.var(0, correction=0).sum() * x.shape[0])
