"""Ground truth for the temporal SAE: on the slow-state world its code predicted from the past tracks the
hidden state better than any latent of a TopK SAE of the same width and k (3 seeds, Student-t interval)."""

import pytest
import torch

from assay.dictionaries.temporal import TemporalConfig, TemporalSAE
from assay.dictionaries.topk import TopKConfig, TopKSAE
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
from assay.evaluate.detection import latent_detection, one_hot_concepts
from assay.stats import t_interval
from assay.worlds.base import make_generator
from assay.worlds.slow_state import SlowStateConfig, SlowStateWorld

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, WINDOWS, N, K = 200, 8, 64, 4


def train(sae, batches, lr):
    trainer = SAETrainer(sae, SAETrainConfig(steps=STEPS, warmup_steps=20, lr=lr))
    trainer.fit(iter(batches))
    return trainer.finalize()[0]


def state_auroc(codes, y):
    """Mean over states of the best single latent's AUROC for "the hidden state is s"."""
    return latent_detection(codes.reshape(-1, N), y, probe_ks=()).mean_auroc


def one_seed(seed):
    world = SlowStateWorld(SlowStateConfig(seed=seed))
    g = make_generator(1000 + seed)
    batches = [world.sample(WINDOWS, generator=g).inputs for _ in range(STEPS)]
    test = world.sample(64, generator=make_generator(2000 + seed))
    d = world.config.d_model
    temporal = train(TemporalSAE(TemporalConfig(d_in=d, d_sae=N, k=K, seed=seed)), batches, 3e-3)
    topk = train(TopKSAE(TopKConfig(d_in=d, d_sae=N, k=K, seed=seed)), [b.reshape(-1, d) for b in batches], None)
    y, _ = one_hot_concepts({"state": test.labels["state"]})
    c = temporal.codes(test.inputs)
    with torch.no_grad():
        plain = topk.encode(test.inputs)
    return state_auroc(c.predicted, y), state_auroc(c.predictable, y), state_auroc(plain, y)


def test_the_code_predicted_from_the_past_tracks_the_slow_state_better_than_any_plain_latent():
    results = [one_seed(s) for s in (0, 1, 2)]
    predicted, predictable, plain = zip(*results)
    # measured (seeds 0, 1, 2): predicted ẑ 0.802 0.814 0.832; TopK best latent 0.734 0.709 0.728 (the
    # single-token ceiling is ≈ 0.73 at faithfulness 0.6); z_p = s_t·ẑ 0.610 0.643 0.636 — the per-token
    # fit s_t is negative on ~30% of tokens, so the scaled code does NOT beat the plain SAE (docs/temporal_sae.md)
    gap = t_interval([a - b for a, b in zip(predicted, plain)])
    assert all(a > b + 0.04 for a, b in zip(predicted, plain)), results
    assert gap.low > 0.03, gap
