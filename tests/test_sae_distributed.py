"""Data-parallel SAE training: 2 gloo processes on localhost end with the same weights as one process
on the same global batches."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from assay.dictionaries.registry import build_sae
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

CFG = SAETrainConfig(steps=4, warmup_steps=1, lr=1e-2, dead_window=64)


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(32, 8, generator=g) + 1.0 for _ in range(4)]


def _sae():
    return build_sae("topk", d_in=8, d_sae=32, k=3, seed=0)


def _worker(rank, world, store_file, out):
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    # a file rendezvous: no free-port race with other processes on the machine
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        trainer = SAETrainer(_sae(), CFG)
        trainer.fit(_batches())
        if rank == 0:
            save_file({k: v.contiguous() for k, v in trainer.saes[0].state_dict().items()}, out)
        dist.barrier()  # neither rank tears gloo down while the other may still be using it
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: gloo's background threads occasionally abort the exiting process
    # ("terminate called without an active exception", ~1 run in 15 here) after all work is done.
    os._exit(0)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "w.safetensors")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2, join=True)
    ddp = load_file(out)
    single = SAETrainer(_sae(), CFG)
    single.fit(_batches())
    assert not torch.equal(ddp["W_dec"], _sae().W_dec.detach())  # it trained
    for k, v in single.saes[0].state_dict().items():
        torch.testing.assert_close(ddp[k], v, atol=1e-5, rtol=1e-4, msg=k)
