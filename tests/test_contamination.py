"""Contamination testbed: planted facts in a transformer's training stream (Bordt et al. 2025).

Oracles: the insert map read back from the rows actually trained on, a python loop of autograd.grad for
TracIn, and planted ground truth (a strongly repeated fact must show a gap and be found by attribution;
zero repetitions must show no gap beyond noise).
"""

from __future__ import annotations

import pytest
import torch

from assay.config import ConfigError
from assay.data_attribution import contamination as cm
from assay.models.train import TrainConfig, sequence_loss
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.markov import MarkovConfig, MarkovMixtureWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def _world() -> MarkovMixtureWorld:
    return MarkovMixtureWorld(MarkovConfig(n_states=8, n_chains=2, seq_len=12))


def test_insert_map_counts_window_and_rows():
    cfg = cm.ContaminationConfig(repetitions=(0, 3, 7), items_per_split=2, window=(0.5, 1.0))
    world = _world()
    facts = cm.make_facts(cfg, len(world.vocab), generator=torch.Generator().manual_seed(0))
    assert facts.copies.tolist() == [0, 0, 0, 0, 3, 3, 7, 7]
    assert set(facts.answer.tolist()) <= set(facts.answer_ids.tolist()) and facts.sep not in facts.key.tolist()
    ins = cm.insert_map(facts.copies, 20, 4, cfg.window, generator=torch.Generator().manual_seed(1))
    assert torch.bincount(ins[:, 2], minlength=8).tolist() == facts.copies.tolist()
    assert bool((ins[:, 0] >= 10).all() and (ins[:, 0] < 20).all() and (ins[:, 1] < 4).all())
    assert len({(s, r) for s, r, _ in ins.tolist()}) == len(ins)  # without replacement
    # the batch written at a step carries exactly its facts, at positions 1..3, with next-token targets
    step = int(ins[0, 0])
    now = ins[ins[:, 0] == step]
    x, y = cm.contaminated_batch(world, 4, torch.Generator().manual_seed(2), facts, now)
    for _, row, item in now.tolist():
        assert x[row, 1:4].tolist() == [facts.sep, int(facts.key[item]), int(facts.answer[item])]
        assert y[row, :3].tolist() == x[row, 1:4].tolist()
    with pytest.raises(ConfigError, match="do not fit"):
        cm.insert_map(torch.tensor([100]), 5, 4, (0.0, 1.0), generator=torch.Generator().manual_seed(0))


def test_tracin_rows_equal_autograd_loop():
    world = _world()
    cfg = cm.ContaminationConfig(repetitions=(2,), items_per_split=2)
    facts = cm.make_facts(cfg, len(world.vocab), generator=torch.Generator().manual_seed(3))
    ins = cm.insert_map(facts.copies, 1, 6, (0.0, 1.0), generator=torch.Generator().manual_seed(4))
    x, y = cm.contaminated_batch(world, 6, torch.Generator().manual_seed(5), facts, ins)
    model = Transformer(TransformerConfig(vocab_size=facts.vocab_size, n_layers=1, d_model=16, context=12,
                                          attn_impl="eager"), generator=torch.Generator().manual_seed(6))
    cks = [({n: p.detach().clone() for n, p in model.named_parameters()}, 0.3)]
    items = torch.tensor([2, 3])
    got = cm.tracin_rows(cks, model, (x, y), facts, items, world.bos_id, chunk=4)
    params = list(model.parameters())

    def flat(v):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params)])

    g_rows = torch.stack([flat(sequence_loss(model(x[i : i + 1]), y[i : i + 1])) for i in range(6)])
    prompts = torch.stack([torch.tensor([world.bos_id, facts.sep, int(facts.key[t])]) for t in items])
    g_t = torch.stack([flat(torch.nn.functional.cross_entropy(model(prompts[j : j + 1])[:, -1], facts.answer[items[j : j + 1]]))
                       for j in range(2)])
    torch.testing.assert_close(got, 0.3 * (g_rows @ g_t.T).double(), atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def planted():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the function-scoped autouse fixture
    try:
        cfg = cm.ContaminationConfig(repetitions=(0, 64), items_per_split=8, n_checkpoints=3, seed=0)
        tcfg = TrainConfig(steps=250, batch_size=16, lr=1e-2, min_lr=1e-3, warmup=20, weight_decay=0.0)
        return cm.run_contamination(_world(), cfg, tcfg)
    finally:
        torch.set_num_threads(threads)


def test_strong_contamination_shows_a_gap_and_is_found(planted):
    r = planted
    assert r.repetitions == (0, 0, 64)
    # 64 copies: the answers are memorised well above the holdout (chance 1/8 for random answers)
    assert float(r.accuracy_gap[2]) >= 0.5
    assert float(r.loss_gap[2]) > 3 * float(r.loss_gap_se[2])
    # TracIn ranks each item's own copies above the other 3,000+ stream rows (other facts' copies included)
    hit = r.facts.copies == 64
    assert float(r.auroc[hit].mean()) > 0.95 and float(r.precision_at_r[hit].mean()) > 0.5
    assert bool(r.auroc[~hit].isnan().all())


def test_zero_repetitions_shows_no_gap(planted):
    r = planted
    # the 0-copy split is exchangeable with the holdout: no loss gap beyond 3 standard errors
    assert abs(float(r.loss_gap[1])) < 3 * float(r.loss_gap_se[1])
    assert abs(float(r.accuracy_gap[1])) <= 0.5


def test_bad_config_errors():
    with pytest.raises(ConfigError, match="window"):
        cm.ContaminationConfig(window=(0.5, 0.5))
    with pytest.raises(ConfigError, match="repetitions"):
        cm.ContaminationConfig(repetitions=(-1,))
    with pytest.raises(ConfigError, match="attribute"):
        cm.ContaminationConfig(repetitions=(0, 4), attribute=(0,))
    with pytest.raises(ConfigError, match="n_answers"):
        cm.ContaminationConfig(n_answers=1)
