"""Streaming a store several times larger than the reader's memory budget keeps RSS bounded."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from assay.store import write_store

pytestmark = pytest.mark.slow

MiB = 1 << 20

READER = textwrap.dedent(
    """
    import json, sys
    import psutil
    from assay.store import ActivationStore

    path, budget = sys.argv[1], int(sys.argv[2])
    proc = psutil.Process()
    store = ActivationStore.open(path, memory_budget=None if budget < 0 else budget)
    # warm-up on other batches (faults in the library code every step below uses), then unmap all
    float(next(store.batches("emb", batch_size=1024, seed=99)).sum())
    store.close()
    base = proc.memory_info().rss
    peak, n, total = base, 0, 0.0
    for batch in store.batches("emb", batch_size=1024, seed=0):
        total += float(batch.sum())
        n += 1
        peak = max(peak, proc.memory_info().rss)
    print(json.dumps({"growth": peak - base, "batches": n, "total": total}))
    """
)


def stream(script, path, budget):
    out = subprocess.run([sys.executable, str(script), str(path), str(budget)], check=True, capture_output=True,
                         text=True, timeout=300)
    return json.loads(out.stdout.splitlines()[-1])


def test_rss_stays_within_budget_on_a_store_8x_larger(tmp_path):
    # 65,536 rows x 256 float32 = 64 MiB of activations, in 8 shards; the budget is 8 MiB.
    d, rows = 256, 65536
    model = nn.Sequential()
    model.add_module("emb", nn.Embedding(4096, d))
    model.eval()
    tokens = torch.randint(0, 4096, (rows // 256, 256), generator=torch.Generator().manual_seed(0))
    write_store(tmp_path / "big", model, "emb", tokens, batch_size=64, shard_rows=8192)
    store_bytes = sum(p.stat().st_size for p in (tmp_path / "big" / "acts").rglob("*.safetensors"))
    assert store_bytes >= 64 * MiB
    script = tmp_path / "reader.py"
    script.write_text(READER)

    bounded = stream(script, tmp_path / "big", 8 * MiB)
    unbounded = stream(script, tmp_path / "big", -1)  # control: no budget, mappings keep every page
    assert bounded["batches"] == unbounded["batches"] == 64
    assert bounded["total"] == unbounded["total"]  # same data either way
    assert bounded["growth"] < 8 * MiB + 4 * MiB, bounded  # the budget + a batch (1 MiB) and slack
    assert unbounded["growth"] > 40 * MiB, unbounded  # shows the measurement can see the difference
