"""The two-rank harness of the distributed tests: spawn gloo ranks on localhost, collect what each returned.

``run_ranks(worker, tmp_path, tag, *args)`` starts ``world`` spawned processes; each joins a gloo group by a
file rendezvous (no free-port race with other processes on the machine), calls ``worker(rank, world, *args)``
(a module-level function returning a JSON-able dict) and writes the dict to a file. A rank that died (e.g.
``os._exit`` in the worker, to simulate a kill) returns ``None``.
"""

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, rendezvous, result, timeout_s, worker, args):
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    doc = worker(rank, world, *args)
    with open(result, "w") as f:
        json.dump(doc, f)
    # Skip interpreter teardown: gloo's background threads occasionally abort the exiting process
    # ("terminate called without an active exception") after all work is done.
    os._exit(0)


def run_ranks(worker, tmp_path, tag, *args, world=2, timeout_s=20, join_s=60):
    """``[worker's dict or None]`` per rank; ``timeout_s`` is the gloo group's timeout."""
    ctx = mp.get_context("spawn")
    results = [tmp_path / f"{tag}-{r}.json" for r in range(world)]
    procs = [ctx.Process(target=_entry, args=(r, world, str(tmp_path / f"rdv-{tag}"), str(results[r]), timeout_s,
                                              worker, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(join_s)
        assert p.exitcode is not None, "a rank hung"
    return [json.loads(f.read_text()) if f.exists() else None for f in results]
