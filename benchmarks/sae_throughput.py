"""TopK SAE training throughput: assay vs the peers, same synthetic activations, same optimizer (Adam,
lr 2e-4/√(n/2¹⁴), grad clip 1, AuxK on; each library keeps its own decoder constraint).

    .venv/bin/python benchmarks/sae_throughput.py [--steps 24] [--batch 4096] [--dense] [--device cpu]

With ``--device cuda`` only assay is timed (the peers' setups below are CPU-only), each step ends with a
``torch.cuda.synchronize()``, and the peak-memory column is still the host RSS.

Peers, each through its own training code:
- EleutherAI sparsify (``eai-sparsify``): ``SparseCoder`` in a hand loop mirroring its trainer's step
  (FVU + AuxK/32, gradient parallel to the atoms removed, clip 1, Adam, unit-norm decoder) — its
  ``Trainer`` needs a Hugging Face model and a tokenised dataset;
- SAELens: the real ``SAETrainer.fit()`` on a ``TopKTrainingSAE``, fed the same pre-made tensors through
  its ``data_provider`` (fit runs in a helper thread; the provider hands it one batch per step, so a
  step's time is the time between two requests, fit's own per-step bookkeeping included);
- dictionary_learning 0.1.0: its ``TopKTrainer.update(step, x)`` (``AutoEncoderTopK``; geometric-median
  ``b_dec`` init at step 0, MSE + AuxK/32, gradient parallel to the atoms removed, clip 1, Adam, unit-norm
  decoder), built with ``warmup_steps=0`` and its dead-latent window set to 10 batches like sparsify's;
- overcomplete 0.3.0: its ``train_sae()`` loop on a ``TopKSAE`` (linear encoder, l2-normalised dictionary)
  with its ``top_k_auxiliary_loss`` criterion, clip 1, Adam, fed through a data loader that hands it one
  batch per step (like SAELens above). Its package imports ``torchvision.transforms`` at import time; a
  stub module is put in ``sys.modules`` (inside this benchmark only) because the PyPI torchvision wheel
  would replace torch, and ``matplotlib.cm.get_cmap`` is aliased for its plotting module.

dictionary_learning and overcomplete cannot be installed with plain pip next to torch 2.13.0 CPU (they
pin torchvision via nnsight/timm): run ``make bench-peers`` first (installs them with ``--no-deps`` plus
their real runtime deps). A peer that cannot be set up is reported as skipped, with the error.

Methods are stepped round-robin (one step of each in turn), so load from other jobs on a shared
machine hits all of them alike; ratios within one run are what count. Medians over the steps after
``--warmup``. Peak memory: the process RSS high-water above the pre-step RSS during each method's
warm-up steps (sampled every millisecond, after ``malloc_trim``), in MiB. The last line is JSON with
assay_samples_per_s, best_peer, best_peer_samples_per_s, speedup, assay_fvu, best_peer_fvu and
bound_fraction (encoder-forward FLOPs 2·B·d·n per step / assay's step time / the dense-matmul FLOP/s
measured in the same run).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D_IN, D_SAE, K = 576, 4608, 32
LR = 2e-4 / (D_SAE / 2**14) ** 0.5
Step = Callable[[torch.Tensor], None]
Recon = Callable[[torch.Tensor], torch.Tensor]


def make_data(batch: int, n_batches: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sparse combinations of 4·d_in random unit directions + noise (an SAE-learnable stream)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(4 * D_IN, D_IN, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)

    def one():
        idx = torch.randint(0, dirs.shape[0], (batch, 24), generator=g)
        vals = torch.rand(batch, 24, generator=g) * 2
        x = torch.nn.functional.embedding_bag(idx, dirs, per_sample_weights=vals, mode="sum")
        return x + 0.05 * torch.randn(batch, D_IN, generator=g)

    return [one() for _ in range(n_batches)], one()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    from assay.evaluate.reconstruction import reconstruction_metrics

    return reconstruction_metrics(x, x_hat).fvu


# ----- memory -----------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    """RSS high-water (bytes above the starting RSS) sampled every millisecond on a thread."""

    def __enter__(self) -> PeakRSS:
        _trim()
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


# ----- methods: each returns (step, reconstruct, close) -----------------------------------------
def setup_assay(steps: int, *, sparse: bool = True) -> tuple[Step, Recon, Callable[[], None]]:
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

    sae = build_sae("topk", d_in=D_IN, d_sae=D_SAE, k=K, sparse=sparse).to(ARGS.device)
    tr = SAETrainer(sae, SAETrainConfig(steps=10**9, lr=LR, warmup_steps=0, normalize_inputs=False))

    def recon(x):
        return sae.decode_codes(sae.encode_codes(x))

    return tr.train_step, recon, lambda: None


def setup_sparsify(steps: int) -> tuple[Step, Recon, Callable[[], None]]:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(k=K, num_latents=D_SAE))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(D_SAE, dtype=torch.long)
    first = [True]

    def step(x):
        if first[0]:  # sparsify initialises b_dec at the first batch's mean
            sae.b_dec.data = x.mean(0).to(sae.dtype)
            first[0] = False
        dead = since >= 10 * x.shape[0]
        out = sae(x, dead_mask=dead)
        loss = out.fvu + 1 / 32 * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        fired = torch.bincount(out.latent_indices.flatten(), minlength=D_SAE)
        since.add_(x.shape[0])
        since[fired > 0] = 0

    return step, lambda x: sae(x).sae_out, lambda: None


class _Handoff:
    """SAELens' data provider: ``fit()`` (on a helper thread) asks for a batch; ``step`` hands one over
    and waits until fit asks for the next one (or returns), so each call is exactly one fit() step."""

    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue(1)
        self.asked: queue.Queue = queue.Queue(1)

    def __iter__(self) -> _Handoff:
        return self

    def __next__(self) -> torch.Tensor:
        self.asked.put("next")
        return self.inbox.get()

    def step(self, x: torch.Tensor) -> None:
        self.inbox.put(x)
        msg = self.asked.get()
        if isinstance(msg, BaseException):
            raise msg


def setup_dictionary_learning(steps: int) -> tuple[Step, Recon, Callable[[], None]]:
    from dictionary_learning.trainers.top_k import TopKTrainer

    tr = TopKTrainer(steps=10**9, activation_dim=D_IN, dict_size=D_SAE, k=K, layer=0, lm_name="bench",
                     lr=LR, warmup_steps=0, device="cpu")
    tr.dead_feature_threshold = 10 * ARGS.batch  # its default (10M tokens) never fires in a benchmark
    n = [0]

    def step(x):
        tr.update(n[0], x)
        n[0] += 1

    return step, lambda x: tr.ae(x), lambda: None


def _import_overcomplete():
    """overcomplete imports ``torchvision.transforms`` at import time: stub it (the real wheel would
    replace torch here), and alias ``matplotlib.cm.get_cmap`` (removed in matplotlib 3.9) for its plots."""
    import types

    import matplotlib
    import matplotlib.cm

    if "torchvision" not in sys.modules:
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    import overcomplete.sae

    return overcomplete.sae


def setup_overcomplete(steps: int) -> tuple[Step, Recon, Callable[[], None]]:
    ocs = _import_overcomplete()
    sae = ocs.TopKSAE(D_IN, nb_concepts=D_SAE, top_k=K, device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    provider = _Handoff()

    def fit() -> None:
        ocs.train_sae(sae, provider, ocs.losses.top_k_auxiliary_loss, opt, nb_epochs=1, clip_grad=1.0,
                      monitoring=0, device="cpu")

    _start_fit(fit, provider)
    return provider.step, lambda x: sae(x)[2], lambda: None


def _start_fit(fit: Callable[[], None], provider: _Handoff) -> None:
    """Run a library's own training loop on a daemon thread until it asks ``provider`` for a batch."""

    def run() -> None:
        try:
            fit()
            provider.asked.put("done")
        except BaseException as e:  # noqa: BLE001  (handed to the main thread)
            provider.asked.put(e)

    threading.Thread(target=run, daemon=True).start()
    first = provider.asked.get()  # the loop set itself up and asks for its first batch
    if isinstance(first, BaseException):
        raise first


def setup_saelens(steps: int) -> tuple[Step, Recon, Callable[[], None]]:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training import sae_trainer
    from sae_lens.training.sae_trainer import SAETrainer

    sae_trainer.tqdm = functools.partial(sae_trainer.tqdm, disable=True)  # no progress bar in the log

    batch = ARGS.batch
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=LR, lr_end=LR,
                           device="cpu", dead_feature_window=10, feature_sampling_window=10**9)
    provider = _Handoff()
    trainer = SAETrainer(cfg, sae, provider)

    _start_fit(trainer.fit, provider)
    return provider.step, lambda x: sae(x), lambda: None


# ----- main -------------------------------------------------------------------------------------
ARGS = argparse.Namespace(batch=4096, device="cpu")


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="dictionary_learning and "
                                 "overcomplete need `make bench-peers` first (plain pip cannot install them here).")
    ap.add_argument("--steps", type=int, default=24, help="training steps per method")
    ap.add_argument("--warmup", type=int, default=4, help="leading steps left out of the medians")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense", action="store_true", help="also time assay's dense reference path")
    ap.add_argument("--device", default="cpu", help="where assay trains, e.g. cuda (the peers: CPU only)")
    ARGS = args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches, held = make_data(args.batch, 4)
    batches, held = [b.to(dev) for b in batches], held.to(dev)
    a = torch.randn(args.batch, D_IN, device=dev)
    w = torch.randn(D_IN, D_SAE, device=dev)
    flops = 2 * args.batch * D_IN * D_SAE

    def matmul_s() -> float:
        sync()
        t = time.perf_counter()
        a @ w
        sync()
        return time.perf_counter() - t

    mm_times = [matmul_s() for _ in range(3)]

    setups: dict[str, Callable] = {"assay": setup_assay}
    if args.dense:
        setups["assay_dense_reference"] = lambda s: setup_assay(s, sparse=False)
    peer_setups = {"sparsify": setup_sparsify, "sae_lens": setup_saelens,
                   "dictionary_learning": setup_dictionary_learning, "overcomplete": setup_overcomplete}
    methods, skipped, peaks = {}, {}, {}
    if dev.type == "cpu":
        setups |= peer_setups
    else:
        skipped |= {name: f"the peers' setups here run on the CPU only, not {dev}" for name in peer_setups}
    for name, make in setups.items():
        try:
            step, recon, close = make(args.steps)
            with PeakRSS() as pk:  # warm-up steps, measured for memory
                for i in range(args.warmup):
                    step(batches[i % len(batches)])
        except Exception as e:  # noqa: BLE001
            skipped[name] = f"{type(e).__name__}: {e}"[:300]
            continue
        methods[name] = (step, recon, close)
        peaks[name] = pk.mib

    times: dict[str, list[float]] = {n: [] for n in methods}
    for i in range(args.warmup, args.steps):
        x = batches[i % len(batches)]
        for name, (step, _, _) in methods.items():
            sync()
            t = time.perf_counter()
            step(x)
            sync()
            times[name].append(time.perf_counter() - t)
        mm_times.append(matmul_s())  # the bound, sampled under the same load
    mm = statistics.median(mm_times)
    mm_rate = flops / mm
    print(f"dense matmul [{args.batch}x{D_IN}]@[{D_IN}x{D_SAE}]: median {mm * 1e3:.1f} ms, "
          f"{mm_rate / 1e9:.1f} GFLOP/s (sampled between rounds)")
    results = {}
    for name, (_, recon, close) in methods.items():
        with torch.no_grad():
            f = fvu(held, recon(held))
        close()
        step = statistics.median(times[name])
        results[name] = {"samples_per_s": args.batch / step, "step_s": step, "fvu": f}
        print(f"{name:>22}: {args.batch / step:9.0f} samples/s  step {step * 1e3:7.1f} ms "
              f"(min {min(times[name]) * 1e3:.0f}, max {max(times[name]) * 1e3:.0f})  FVU {f:.4f}  "
              f"step peak +{peaks[name]:.0f} MiB")
    for name, why in skipped.items():
        print(f"{name:>22}: skipped ({why})")
    if "assay" not in results:
        raise SystemExit("assay itself failed: " + skipped.get("assay", "?"))
    peers = {k: v for k, v in results.items() if not k.startswith("assay")}
    best = max(peers, key=lambda k: peers[k]["samples_per_s"]) if peers else None
    ours = results["assay"]
    for name, v in results.items():
        if name != "assay":
            print(f"assay / {name}: {ours['samples_per_s'] / v['samples_per_s']:.2f}x")
    summary = {
        "assay_samples_per_s": round(ours["samples_per_s"], 1),
        "best_peer": best,
        "best_peer_samples_per_s": round(peers[best]["samples_per_s"], 1) if best else None,
        "speedup": round(ours["samples_per_s"] / peers[best]["samples_per_s"], 3) if best else None,
        "assay_fvu": round(ours["fvu"], 4),
        "best_peer_fvu": round(peers[best]["fvu"], 4) if best else None,
        "bound_fraction": round((flops / ours["step_s"]) / mm_rate, 3),
        "matmul_gflops": round(mm_rate / 1e9, 1),
        "samples_per_s": {k: round(v["samples_per_s"], 1) for k, v in results.items()},
        "fvu": {k: round(v["fvu"], 4) for k, v in results.items()},
        "step_peak_mib": {k: round(v) for k, v in peaks.items()},
        "steps": args.steps, "warmup": args.warmup, "batch": args.batch, "threads": args.threads,
        "device": args.device, "skipped": sorted(skipped),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
