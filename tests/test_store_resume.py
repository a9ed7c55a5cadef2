"""A writer killed with SIGKILL mid-run resumes to a store bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from assay.store import ActivationStore

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch import nn
    from assay.store import write_store

    torch.set_num_threads(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.emb = nn.Embedding(97, 24)
            self.layers = nn.ModuleList([nn.Linear(24, 24) for _ in range(3)])
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        def forward(self, x):
            h = self.emb(x)
            for layer in self.layers:
                # the batch mean makes every row depend on its whole forward batch, so the resumed run
                # must recompute exactly the batches of the uninterrupted one to match it bit for bit
                h = h + torch.tanh(layer(h)) + 0.1 * h.mean(dim=(0, 1))
            return h

    out, delay = sys.argv[1], float(sys.argv[2])
    tokens = torch.randint(0, 97, (150, 24), generator=torch.Generator().manual_seed(1))

    def progress(done, total):
        print(done, flush=True)
        time.sleep(delay)

    write_store(out, Net().eval(), ["layers.0", "layers.2"], tokens, batch_size=5, shard_rows=70,
                dtype="bfloat16", progress=progress)
    print("finished", flush=True)
    """
)


def run_and_kill(script, out, kill_after_rows):
    """Start a writer; SIGKILL it once it reports ``kill_after_rows`` rows; return whether it was killed."""
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.01"], stdout=subprocess.PIPE, text=True)
    killed = False
    for line in proc.stdout:
        if line.strip().isdigit() and int(line) >= kill_after_rows:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.stdout.close()
    proc.wait(timeout=60)
    return killed


def shard_records(path):
    doc = json.loads((path / "manifest.json").read_text())
    return doc, [(s["index"], s["rows"], {g: f["sha256"] for g, f in s["files"].items()}) for s in doc["shards"]]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(SCRIPT)
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    subprocess.run([sys.executable, str(script), str(ref), "0"], check=True, capture_output=True, timeout=120)

    rows_at_kill = []
    for kill_after in (700, 2000):  # two crashes at different points, then a clean finish
        assert run_and_kill(script, broken, kill_after)
        doc, _ = shard_records(broken)
        assert not doc["complete"]
        rows_at_kill.append(sum(s["rows"] for s in doc["shards"]))
    assert 0 < rows_at_kill[0] < rows_at_kill[1] < 150 * 24  # each kill really was mid-run
    done = subprocess.run([sys.executable, str(script), str(broken), "0"], check=True, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "finished"

    ref_doc, ref_shards = shard_records(ref)
    got_doc, got_shards = shard_records(broken)
    assert got_doc["complete"] and got_doc["config"] == ref_doc["config"]
    assert got_shards == ref_shards  # same rows, same checksums: no duplicates, no gaps
    for s in ref_doc["shards"]:
        for rec in s["files"].values():
            assert (broken / rec["path"]).read_bytes() == (ref / rec["path"]).read_bytes()
    leftovers = sorted(p.name for p in broken.rglob("*") if p.is_file() and (p.name.endswith(".tmp")))
    assert leftovers == []
    a, b = ActivationStore.open(ref, verify="open"), ActivationStore.open(broken, verify="open")
    assert a.n_rows == b.n_rows == 3600
    for site in ("layers.0", "layers.2"):
        assert torch.equal(a.read(site, 0, 3600, dtype=torch.bfloat16), b.read(site, 0, 3600, dtype=torch.bfloat16))
    assert torch.equal(b.tokens.all(), a.tokens.all())
