"""Latent-sharded TopK SAE: 2 gloo ranks, each holding half the latents, give the unsharded SAE's codes,
reconstruction and one optimizer step (weights gathered), to float tolerance."""

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_ranks
from safetensors.torch import load_file, save_file

from assay.dictionaries.registry import build_sae
from assay.dictionaries.sharded import ShardedTopKSAE, sharded_train_step


def _sae(d_sae=32):
    sae = build_sae("topk", d_in=8, d_sae=d_sae, k=4, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # nonzero biases, so their paths (b_dec replicated, b_enc sharded) count
        sae.b_dec.copy_(torch.randn(8, generator=g))
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
    return sae


def _x():
    return torch.randn(16, 8, generator=torch.Generator().manual_seed(2)) + 1.0


def _worker(rank, world, out_dir):
    model = ShardedTopKSAE.from_full(_sae())
    out = model(_x())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = sharded_train_step(model, opt, _x(), grad_clip=1.0)
    full = model.gather()
    try:
        ShardedTopKSAE.from_full(_sae(d_sae=31))
        uneven = ""
    except ValueError as e:
        uneven = str(e)
    if rank == 0:
        save_file({"codes": out.codes.dense(), "recon": out.recon.detach(), "loss": loss,
                   **{f"w.{k}": v.contiguous() for k, v in full.state_dict().items()}},
                  f"{out_dir}/sharded.safetensors")
    dist.barrier()  # neither rank leaves while the other may still be using gloo
    return {"uneven": uneven}


@pytest.mark.slow
def test_sharded_topk_equals_unsharded(tmp_path):
    ranks = run_ranks(_worker, tmp_path, "sharded", str(tmp_path))
    assert all(r is not None for r in ranks), "a rank failed (its traceback is above)"
    got = load_file(tmp_path / "sharded.safetensors")

    sae = _sae()
    out = sae(_x())
    codes = out.codes.dense()
    fired = codes.nonzero()[:, 1]
    assert (fired < 16).any() and (fired >= 16).any()  # the global TopK draws on both ranks' latents
    torch.testing.assert_close(got["codes"], codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["recon"], out.recon.detach(), atol=1e-5, rtol=1e-5)

    # the unsharded step, in SAETrainer's order
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    opt.zero_grad()
    out.loss.backward()
    sae.before_step()
    norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    assert norm > 1.0  # clipping (to the global norm) is exercised
    opt.step()
    sae.after_step()
    torch.testing.assert_close(got["loss"], out.loss.detach(), atol=1e-5, rtol=1e-5)
    for k, v in sae.state_dict().items():
        assert not torch.equal(v, _sae().state_dict()[k]), k  # every tensor moved
        torch.testing.assert_close(got[f"w.{k}"], v, atol=1e-5, rtol=1e-4, msg=k)
    assert all("d_sae=31 latents do not split evenly over 2 ranks" in r["uneven"] for r in ranks)
