"""Data-parallel dictionary training (SAE, transcoder, crosscoder): 2 gloo processes on localhost end with
the same weights as one process on the same global batches, AuxK dead-latent loss included."""

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_ranks
from safetensors.torch import load_file, save_file

from assay.dictionaries.registry import build_sae
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

# dead_window=32 (one global batch): latents that miss a step count as dead, so the AuxK loss is exercised
CFG = SAETrainConfig(steps=4, warmup_steps=1, lr=1e-2, dead_window=32)

KINDS = {
    "topk": dict(d_in=8, d_sae=32, k=3, seed=0),
    "topk_transcoder": dict(d_in=8, d_out=6, d_sae=32, k=3, skip=True, seed=0),
    "crosscoder": dict(d_in=8, n_sources=2, d_sae=32, seed=0),
}


def _batches(kind):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 8, generator=g) + 1.0 for _ in range(4)]
    if kind != "topk_transcoder":
        return xs
    return [(x, x[:, :6].tanh() + 0.1 * torch.randn(32, 6, generator=g)) for x in xs]


def _sae(kind):
    return build_sae(kind, **KINDS[kind])


def _worker(rank, world, out_dir):
    for kind in KINDS:  # one launch for all kinds: start-up dominates the cost
        trainer = SAETrainer(_sae(kind), CFG)
        trainer.fit(_batches(kind))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in trainer.saes[0].state_dict().items()},
                      f"{out_dir}/{kind}.safetensors")
    dist.barrier()  # neither rank leaves while the other may still be using gloo
    return {}


@pytest.fixture(scope="module")
def two_rank_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    assert all(r is not None for r in run_ranks(_worker, d, "ddp", str(d))), "a rank failed (its traceback is above)"
    return d


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_gloo_ranks_equal_one_process(two_rank_weights, kind):
    ddp = load_file(two_rank_weights / f"{kind}.safetensors")
    single = SAETrainer(_sae(kind), CFG)
    single.fit(_batches(kind))
    if kind != "crosscoder":  # AuxK ran: some latents were dead at a step and got a nonzero aux loss
        assert single.last[0]["dead"] > 0
    assert not torch.equal(ddp["W_dec"], _sae(kind).W_dec.detach())  # it trained
    for k, v in single.saes[0].state_dict().items():
        torch.testing.assert_close(ddp[k], v, atol=1e-5, rtol=1e-4, msg=k)
