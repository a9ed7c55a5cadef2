import math
from dataclasses import dataclass, replace

import pytest
import torch

from assay.artifact import ArtifactError
from assay.config import ConfigError
from assay.models.train import TrainConfig, latest_checkpoint, lr_at, next_token_targets, sequence_loss, train
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.base import Batch, make_generator


@dataclass(frozen=True, kw_only=True)
class CountConfig:
    """Stand-in world: count upward mod `modulus` from a random start, right-padded."""

    modulus: int = 8
    """Number of counting tokens."""
    length: int = 12
    """Sequence length T."""


class CountWorld:
    """A trivial sequence world for tests: x_{t+1} = (x_t + 1) mod m, random start and length."""

    acceptance = ("accuracy", 0.9)

    def __init__(self, config: CountConfig = CountConfig()):
        self.config = config
        self.vocab = tuple(str(i) for i in range(config.modulus)) + ("<pad>",)
        self.pad_id = config.modulus

    def sample(self, n, *, generator):
        m, t = self.config.modulus, self.config.length
        start = torch.randint(0, m, (n, 1), generator=generator)
        lengths = torch.randint(t // 2, t + 1, (n, 1), generator=generator)
        inputs = (start + torch.arange(t)) % m
        pad = torch.arange(t) >= lengths
        inputs[pad] = self.pad_id
        targets = torch.full_like(inputs, -100)
        targets[:, :-1] = inputs[:, 1:]
        targets[targets == self.pad_id] = -100
        return Batch(inputs=inputs, targets=targets, labels={"start": start[:, 0]})

    def decode(self, ids):
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def evaluate(self, logits, batch):
        keep = batch.targets != -100
        acc = (logits.argmax(-1)[keep] == batch.targets[keep]).float().mean()
        return {"accuracy": float(acc)}


WORLD = CountWorld()
MODEL_CFG = TransformerConfig(vocab_size=9, n_layers=1, n_heads=2, d_model=16, context=12)


def fresh(seed=0):
    return Transformer(MODEL_CFG, generator=make_generator(seed))


def small(**kw):
    base = dict(steps=30, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=5, eval_every=10, eval_size=64)
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_matches_closed_form():
    cfg = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_next_token_targets():
    x = torch.tensor([[1, 2, 3, 9, 9]])
    assert next_token_targets(x, pad_id=9).tolist() == [[2, 3, -100, -100, -100]]


def test_sequence_loss_of_class_logits_is_cross_entropy():
    g = make_generator(3)
    logits, y = torch.randn(7, 4, generator=g), torch.randint(0, 4, (7,), generator=g)
    assert float(sequence_loss(logits, y)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))
    seq, t = torch.randn(2, 3, 5, generator=g), torch.tensor([[1, -100, 2], [0, 4, -100]])
    kept = [(0, 0), (0, 2), (1, 0), (1, 1)]
    ref = sum(-torch.log_softmax(seq[b, i], -1)[t[b, i]] for b, i in kept) / 4
    assert float(sequence_loss(seq, t)) == pytest.approx(float(ref), rel=1e-6)


class StreamWorld(CountWorld):
    """CountWorld whose training stream is fixed: update s trains on rows starting at token s mod m."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def train_batch(self, step, n, *, generator):
        self.asked.append((step, n))
        m, t = self.config.modulus, self.config.length
        inputs = (step + torch.arange(t)).remainder(m).expand(n, t).clone()
        return Batch(inputs=inputs, targets=next_token_targets(inputs, self.pad_id))


def test_train_batch_replaces_sampling_for_training_steps_only():
    world = StreamWorld()
    res = train(fresh(), world, small(steps=12, eval_every=None))
    assert world.asked == [(s, 16) for s in range(12)]  # every update, in order; evaluation still samples
    assert len(res.losses) == 12 and "accuracy" in res.metrics


def test_training_learns_the_stand_in_world():
    res = train(fresh(), WORLD, small(steps=60))
    assert len(res.losses) == 60 and res.step == 60
    assert sum(res.losses[-10:]) / 10 < 0.5 * sum(res.losses[:10]) / 10
    assert [h["step"] for h in res.history] == [10, 20, 30, 40, 50, 60]
    assert res.metrics["accuracy"] > 0.6 and res.metrics == res.history[-1]
    assert not res.model.training


def test_training_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = train(fresh(), WORLD, small(steps=10))
    assert torch.equal(torch.get_rng_state(), state)
    b = train(fresh(), WORLD, small(steps=10))
    assert a.losses == b.losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_is_exact(tmp_path, dropout):
    cfg_m = replace(MODEL_CFG, dropout=dropout)
    straight = train(Transformer(cfg_m, generator=make_generator(0)), WORLD, small(steps=20))
    first = train(Transformer(cfg_m, generator=make_generator(0)), WORLD, small(steps=20, checkpoint_every=10),
                  checkpoint_dir=tmp_path)
    ck = tmp_path / "step-0000010"
    assert ck.is_dir() and latest_checkpoint(tmp_path) == tmp_path / "step-0000020"
    # a fresh model with different init, resumed from step 10
    resumed = train(Transformer(cfg_m, generator=make_generator(99)), WORLD, small(steps=20), resume=ck)
    assert resumed.step == 20 and resumed.losses == straight.losses == first.losses
    assert resumed.history == straight.history
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def test_resume_rejects_mismatched_configs(tmp_path):
    train(fresh(), WORLD, small(steps=10, checkpoint_every=10), checkpoint_dir=tmp_path)
    ck = latest_checkpoint(tmp_path)
    with pytest.raises(ArtifactError, match="model config"):
        train(Transformer(replace(MODEL_CFG, d_model=32)), WORLD, small(steps=20), resume=ck)
    with pytest.raises(ArtifactError, match="differs"):
        train(fresh(), WORLD, small(steps=20, lr=1e-2), resume=ck)


def test_bad_train_config_errors():
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match="min_lr <= lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
    with pytest.raises(ConfigError, match="no checkpoint_dir"):
        train(fresh(), WORLD, small(checkpoint_every=5))
    with pytest.raises(ConfigError, match="no checkpoint_dir"):
        train(fresh(), WORLD, small(), checkpoint_steps=[5])
    with pytest.raises(ConfigError, match=r"checkpoint_steps \[31\] lie outside 0..30"):
        train(fresh(), WORLD, small(), checkpoint_dir="unused", checkpoint_steps=[0, 31])
