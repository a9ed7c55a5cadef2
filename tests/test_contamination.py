"""Contamination testbed: planted facts in a transformer's training stream (Bordt et al. 2025).

Oracles: the insert map read back from the stream rows, a python loop of autograd.grad for TracInCP with
the next-token loss, hand-computed gaps and recovery, and planted ground truth (a strongly repeated fact
must show a gap and be found by attribution; zero repetitions must show no gap beyond noise). The world
is trained by ``assay.models.train`` and scored by the library's TracIn, through the bench family.
"""

from __future__ import annotations

import pytest
import torch

from assay.bench.data_attribution import FAMILY, WORLD_PARAMS, DataAttributionSettings, prepare_contamination
from assay.bench.runner import RunContext
from assay.bench.spec import SpecRun
from assay.config import ConfigError
from assay.data_attribution.grads import next_token_loss
from assay.data_attribution.tracin import TracInCheckpoint, tracin_cp
from assay.evaluate.contamination import copy_recovery, split_gaps
from assay.models.train import TrainConfig, sequence_loss, train
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.contamination import (
    ContaminatedMarkovConfig,
    ContaminatedMarkovWorld,
    ContaminatedWorld,
    ContaminationConfig,
)
from assay.worlds.markov import MarkovConfig, MarkovMixtureWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def _base() -> MarkovMixtureWorld:
    return MarkovMixtureWorld(MarkovConfig(n_states=8, n_chains=2, seq_len=12))


def test_stream_carries_the_insert_map():
    cfg = ContaminationConfig(repetitions=(0, 3, 7), items_per_split=2, window=(0.5, 1.0), steps=20, batch_size=4)
    world = ContaminatedWorld(_base(), cfg)
    facts, ins = world.facts, world.inserts
    assert facts.copies.tolist() == [0, 0, 0, 0, 3, 3, 7, 7] and facts.vocab_size == len(world.vocab)
    assert set(facts.answer.tolist()) <= set(facts.answer_ids.tolist()) and facts.sep not in facts.key.tolist()
    assert torch.bincount(ins[:, 2], minlength=8).tolist() == facts.copies.tolist()
    assert bool((ins[:, 0] >= 10).all() and (ins[:, 0] < 20).all() and (ins[:, 1] < 4).all())
    assert len({(s, r) for s, r, _ in ins.tolist()}) == len(ins)  # without replacement
    # each copy sits at positions 1..3 of its (step, row), with next-token targets; row_item is the map
    x, y = world.stream.inputs, world.stream.targets
    for step, row, item in ins.tolist():
        i = step * 4 + row
        assert x[i, 1:4].tolist() == [facts.sep, int(facts.key[item]), int(facts.answer[item])]
        assert y[i, :3].tolist() == x[i, 1:4].tolist() and int(world.row_item[i]) == item
    assert int((world.row_item >= 0).sum()) == len(ins)
    b = world.train_batch(12, 4, generator=torch.Generator())
    assert torch.equal(b.inputs, x[48:52])
    with pytest.raises(ConfigError, match="steps=20, batch_size=4"):
        world.train_batch(20, 4, generator=torch.Generator())
    p = world.prompts()
    assert p.inputs[:, 2].tolist() == facts.key.tolist() and p.targets[:, -1].tolist() == facts.answer.tolist()
    assert bool((p.targets[:, :2] == -100).all())
    with pytest.raises(ConfigError, match="do not fit"):
        ContaminatedWorld(_base(), ContaminationConfig(repetitions=(100,), items_per_split=1, steps=5, batch_size=4))


def test_trainer_consumes_exactly_the_stream():
    cfg = ContaminationConfig(repetitions=(2,), items_per_split=2, steps=6, batch_size=4)
    world = ContaminatedWorld(_base(), cfg)
    model = Transformer(TransformerConfig(vocab_size=len(world.vocab), n_layers=1, d_model=16, context=12,
                                          attn_impl="eager"), generator=torch.Generator().manual_seed(0))
    res = train(model, world, TrainConfig(steps=6, batch_size=4, warmup=1, eval_every=None, eval_size=8))
    assert len(res.losses) == 6
    with pytest.raises(ConfigError, match="steps=6"):  # a trainer that runs longer than the stream is refused
        train(model, world, TrainConfig(steps=7, batch_size=4, warmup=1, eval_every=None, eval_size=8))


def test_tracin_cp_with_next_token_loss_equals_autograd_loop():
    world = ContaminatedWorld(_base(), ContaminationConfig(repetitions=(2,), items_per_split=2, steps=1, batch_size=6))
    x, y = world.stream.inputs, world.stream.targets
    model = Transformer(TransformerConfig(vocab_size=len(world.vocab), n_layers=1, d_model=16, context=12,
                                          attn_impl="eager"), generator=torch.Generator().manual_seed(6))
    other = Transformer(model.config, generator=torch.Generator().manual_seed(7))
    cks = [TracInCheckpoint(model.state_dict(), 0.3), TracInCheckpoint(other.state_dict(), 0.05)]
    prompts = world.prompts()
    items = torch.tensor([2, 3])
    got = tracin_cp(model, cks, (x, y), (prompts.inputs[items], prompts.targets[items]), out_fn=next_token_loss,
                    batch_size=4)
    want = torch.zeros(6, 2, dtype=torch.float64)
    for m, ck in zip((model, other), cks):
        params = list(m.parameters())

        def flat(v, params=params):
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params)])

        g_rows = torch.stack([flat(sequence_loss(m(x[i : i + 1]), y[i : i + 1])) for i in range(6)])
        g_t = torch.stack([flat(torch.nn.functional.cross_entropy(m(prompts.inputs[t : t + 1])[:, -1],
                                                                  world.facts.answer[t : t + 1])) for t in items])
        want += ck.lr * (g_rows @ g_t.T).double()
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-4)


def test_gaps_and_recovery_by_hand():
    # items 0, 1 holdout; 2, 3 split 1. Answers among ids 5, 6; item 3 is wrong (6 > 5 but answer 5)
    logits = torch.zeros(4, 7)
    logits[0, 5], logits[1, 6], logits[2, 5], logits[3, 6] = 2.0, 1.0, 3.0, 1.0
    answer = torch.tensor([5, 5, 5, 5])
    g = split_gaps(logits, answer, torch.tensor([5, 6]), torch.tensor([0, 0, 1, 1]))
    assert g.accuracy.tolist() == [0.5, 0.5] and g.accuracy_gap.tolist() == [0.0, 0.0]
    ce = torch.nn.functional.cross_entropy(logits.double(), answer, reduction="none")
    assert g.loss_gap[1].item() == pytest.approx(float(ce[:2].mean() - ce[2:].mean()))
    se = ((ce[:2].var() / 2 + ce[2:].var() / 2) ** 0.5).item()
    assert g.loss_gap_se[1].item() == pytest.approx(se)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.8, 0.3], [0.1, 0.2]])
    rec = copy_recovery(scores, torch.tensor([7, 9, 7, -1]), torch.tensor([7, 9]))
    assert rec.precision_at_r.tolist() == [1.0, 1.0] and rec.auroc.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="no copy"):
        copy_recovery(scores, torch.tensor([7, 7, 7, -1]), torch.tensor([7, 9]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the function-scoped autouse fixture
    try:
        settings = DataAttributionSettings(lm_steps=250, lm_batch_size=16, lm_lr=1e-2, n_checkpoints=3)
        world = {**WORLD_PARAMS["contamination"], "repetitions": "0/64", "items": 12}
        prepared = prepare_contamination(world, 0, settings)
        ctx = RunContext(0, settings, tmp_path_factory.mktemp("run"))
        scored = FAMILY.score(prepared, SpecRun("tracin", {}, "tracin", "default"), ctx)
        return prepared, scored
    finally:
        torch.set_num_threads(threads)


def test_strong_contamination_shows_a_gap_and_is_found(planted):
    prepared, m = planted
    g = prepared.gaps
    assert prepared.world.config.repetitions == (0, 64) and len(prepared.checkpoints) == 3
    # 64 copies: the answers are memorised well above the holdout (chance 1/8 for random answers). Measured over
    # seeds 0-4 (12 items per split): accuracy gap 0.83-0.92, loss gap 4.4-8.0 standard errors, copy AUROC
    # 0.993-0.999, precision@r 0.66-0.91 (seed 0: 0.83, 4.4, 0.997, 0.85). With 8 items per split the accuracy
    # gap is too coarse a measure: seed 0 gave 0.25 (2 of 8 items).
    assert float(g.accuracy_gap[2]) >= 0.5 and m["acc_gap_r64"] == float(g.accuracy_gap[2])
    assert float(g.loss_gap[2]) > 3 * float(g.loss_gap_se[2])
    # TracInCP ranks each item's own copies above the other 3,000+ stream rows (other facts' copies included)
    assert m["copy_auroc_r64"] > 0.95 and m["copy_precision_r64"] > 0.5


def test_zero_repetitions_shows_no_gap(planted):
    g = planted[0].gaps
    # the 0-copy split is exchangeable with the holdout: no loss gap beyond 3 standard errors (measured 0.3-1.7)
    assert abs(float(g.loss_gap[1])) < 3 * float(g.loss_gap_se[1])
    assert abs(float(g.accuracy_gap[1])) <= 0.5
    assert "copy_auroc_r0" not in planted[1]  # nothing inserted, nothing attributed


def test_bad_config_errors():
    with pytest.raises(ConfigError, match="window"):
        ContaminationConfig(window=(0.5, 0.5))
    with pytest.raises(ConfigError, match="repetitions"):
        ContaminationConfig(repetitions=(-1,))
    with pytest.raises(ConfigError, match="n_answers"):
        ContaminationConfig(n_answers=1)
    with pytest.raises(ConfigError, match="steps and batch_size"):
        ContaminationConfig(steps=0)
    with pytest.raises(ValueError, match="bos_id"):
        ContaminatedWorld(object())


def test_registered_markov_world_is_the_hand_built_one_and_trains_through_the_zoo(tmp_path):
    from assay.models.zoo import reference_configs, world_model
    from assay.worlds import registry

    kw = dict(repetitions=(3,), items_per_split=2, window=(0.25, 0.75), steps=12, batch_size=4, seed=5)
    world = registry.make("contamination", **kw)
    assert isinstance(world, ContaminatedMarkovWorld) and world.config == ContaminatedMarkovConfig(**kw)
    by_hand = ContaminatedWorld(_base(), ContaminationConfig(**kw))
    assert torch.equal(world.stream.inputs, by_hand.stream.inputs) and torch.equal(world.inserts, by_hand.inserts)
    assert world.decode(world.prompts().inputs[0]) == ["<bos>", "<sep>", "<key0>"]
    _, train_cfg = reference_configs(world)
    assert (train_cfg.steps, train_cfg.batch_size) == (12, 4)  # the whole stream, batch by batch
    wm = world_model("contamination", world_overrides=kw, cache_dir=tmp_path, progress=False)
    assert wm.trained and wm.metrics["step"] == 12 and wm.metrics["eval_loss"] > 0
