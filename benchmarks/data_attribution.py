"""Training-data attribution benchmark: assay vs traker and dattri in one run, plus group attribution.

MLP 100-256-256-10 (≈94k parameters) on a seeded 10-class Gaussian-mixture task, 5,000 train / 500
test points, projection to 1,024 dims. Measures featurisation throughput (train examples/s) and
total scoring time (featurise train, finalise, featurise targets, score) for TRAK and TracIn
(Grad-Dot, one checkpoint); LDS of each against models retrained on 50% subsets; and group
attribution (GGDA): group TRAK over K groups vs pointwise TRAK on the generic path, one work definition
for both (featurise train incl. kernel + featurise test + score), its speed-up and group-LDS ratio
(group-subset retrainings; pointwise scores summed over the same groups).

    .venv/bin/python benchmarks/data_attribution.py            # full
    .venv/bin/python benchmarks/data_attribution.py --quick    # small smoke run
    .venv/bin/python benchmarks/data_attribution.py --only groups   # group attribution only
    .venv/bin/python benchmarks/data_attribution.py --only groups --n-train 20000 --group-size 64 --targets mean class0
        # GGDA's regime: training set ≫ target side (one gradient of the property "mean loss over the targets")

Last line: JSON with speedup_vs_best_peer, group_speedup, group_lds_ratio. The group section is in
benchmarks/data_attribution_groups.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from functools import partial

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch
from data_attribution_groups import groups_section, timed  # benchmarks/: GGDA vs pointwise

from assay.data_attribution import grads, retrain, tracin, trak
from assay.data_attribution.featurize import featurize
from assay.data_attribution.projection import ProjectionConfig
from assay.evaluate.lds import lds
from assay.models.fit import fit_classifier
from assay.models.mlp import MLP


def make_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 10-class Gaussian mixture: 3 random centres per class in d dims, unit noise."""
    g = torch.Generator().manual_seed(1234)
    centres = torch.randn(10, 3, d, generator=g) * 0.45
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    c = torch.randint(0, 3, (n,), generator=g)
    return centres[y, c] + torch.randn(n, d, generator=g), y


def train_model(x, y, seed: int, epochs: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)  # explicit init seed without touching global RNG
    model = MLP(x.shape[1], (256, 256), 10)
    with torch.no_grad():
        for p in model.parameters():
            bound = 1 / math.sqrt(p.shape[-1] if p.dim() > 1 else p.shape[0])
            p.uniform_(-bound, bound, generator=g)
    return fit_classifier(model, x, y, epochs=epochs, batch_size=128, lr=1e-3, weight_decay=1e-4, seed=seed)


def mlp_target_values(idx, seed, *, x_train, y_train, x_target, y_target, epochs):
    model = train_model(x_train[idx], y_train[idx], seed, epochs)
    with torch.no_grad():
        return -torch.nn.functional.cross_entropy(model(x_target), y_target, reduction="none")


# ----------------------------------------------------------------------------- assay


def assay_trak(model, train, test, k, batch, seed=0):
    cfg = ProjectionConfig(dim=k, seed=seed)
    t0 = time.perf_counter()
    phi, q = trak.trak_featurize(model, *train, projection=cfg, batch_size=batch)
    t_feat = time.perf_counter() - t0
    ck = trak.trak_finalize(phi, q)
    g, _ = trak.trak_featurize(model, *test, projection=cfg, batch_size=batch)
    scores = trak.trak_scores([ck], [g])
    return scores, t_feat, time.perf_counter() - t0


def assay_tracin(model, train, test, k, batch):
    cfg = ProjectionConfig(dim=k, seed=0)
    t0 = time.perf_counter()
    phi = featurize(model, *train, projection=cfg, out_fn=grads.cross_entropy, batch_size=batch)
    t_feat = time.perf_counter() - t0
    g = featurize(model, *test, projection=cfg, out_fn=grads.cross_entropy, batch_size=batch)
    return tracin.tracin_scores([phi], [g]), t_feat, time.perf_counter() - t0


# ----------------------------------------------------------------------------- peers


def traker_trak(model, train, test, k, batch, save_dir, seed=0):
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    n_params = sum(p.numel() for p in model.parameters())
    proj = BasicProjector(grad_dim=n_params, proj_dim=k, seed=seed, proj_type=ProjectionType.normal, device="cpu",
                          block_size=k, dtype=torch.float32)
    t0 = time.perf_counter()
    tr = TRAKer(model=model, task="image_classification", train_set_size=train[0].shape[0], projector=proj,
                device="cpu", use_half_precision=False, save_dir=save_dir, proj_dim=k)
    tr.load_checkpoint(model.state_dict(), model_id=0)
    for s in range(0, train[0].shape[0], batch):
        tr.featurize(batch=(train[0][s : s + batch], train[1][s : s + batch]), num_samples=min(batch, train[0].shape[0] - s))
    t_feat = time.perf_counter() - t0
    tr.finalize_features()
    proj.generate_sketch_matrix(proj.generator_states[0])  # finalize_features freed it (peers.md)
    tr.start_scoring_checkpoint(exp_name="bench", checkpoint=model.state_dict(), model_id=0, num_targets=test[0].shape[0])
    for s in range(0, test[0].shape[0], batch):
        tr.score(batch=(test[0][s : s + batch], test[1][s : s + batch]), num_samples=min(batch, test[0].shape[0] - s))
    scores = torch.as_tensor(np.array(tr.finalize_scores(exp_name="bench")))
    return scores, t_feat, time.perf_counter() - t0


def _dattri_task(model):
    from dattri.task import AttributionTask

    def margin_fn(params, data):
        x, y = data
        out = torch.func.functional_call(model, params, x.unsqueeze(0) if x.dim() == 1 else x)
        yy = y.unsqueeze(0) if y.dim() == 0 else y
        return grads.margin(out, yy).sum()

    return AttributionTask(loss_func=margin_fn, model=model, checkpoints=model.state_dict())


def _dattri_loaders(train, test, batch):
    from torch.utils.data import DataLoader, TensorDataset

    return (DataLoader(TensorDataset(*train), batch_size=batch, shuffle=False),
            DataLoader(TensorDataset(*test), batch_size=batch, shuffle=False))


def dattri_trak(model, train, test, k, batch):
    from dattri.algorithm.trak import TRAKAttributor

    def prob_fn(params, data):
        x, y = data
        out = torch.func.functional_call(model, params, x.unsqueeze(0))
        return torch.softmax(out, -1)[0, y]

    train_dl, test_dl = _dattri_loaders(train, test, batch)
    kwargs = {"proj_dim": k, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}
    t0 = time.perf_counter()
    att = TRAKAttributor(task=_dattri_task(model), correct_probability_func=prob_fn, projector_kwargs=dict(kwargs),
                         device="cpu")
    att.cache(train_dl)
    t_feat = time.perf_counter() - t0
    scores = att.attribute(test_dl)
    return scores.detach(), t_feat, time.perf_counter() - t0


def dattri_tracin(model, train, test, k, batch):
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    def loss_fn(params, data):
        x, y = data
        out = torch.func.functional_call(model, params, x.unsqueeze(0))
        return torch.nn.functional.cross_entropy(out, y.unsqueeze(0))

    task = AttributionTask(loss_func=loss_fn, model=model, checkpoints=model.state_dict())
    train_dl, test_dl = _dattri_loaders(train, test, batch)
    kwargs = {"proj_dim": k, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}
    t0 = time.perf_counter()
    att = TracInAttributor(task=task, weight_list=torch.ones(1), normalized_grad=False, projector_kwargs=dict(kwargs),
                           device="cpu")
    scores = att.attribute(train_dl, test_dl)
    return scores.detach(), time.perf_counter() - t0


# ----------------------------------------------------------------------------- main


def peers_section(model, train, test, args, truth) -> dict:
    """TRAK and TracIn: assay vs traker and dattri, throughput, total time and LDS."""
    k, batch, n = args.proj_dim, 500, args.n_train
    res = {}
    seeds = range(args.seeds)
    runs = {"assay TRAK": [assay_trak(model, train, test, k, batch, seed=s) for s in seeds]}
    res["assay TracIn"] = assay_tracin(model, train, test, k, batch)
    runs["traker TRAK"] = []
    for s in seeds:
        with tempfile.TemporaryDirectory() as d:
            runs["traker TRAK"].append(traker_trak(model, train, test, k, batch, d, seed=s))
    for name, rs in runs.items():  # median timings over projection seeds; scores of seed 0
        res[name] = (rs[0][0], float(np.median([r[1] for r in rs])), float(np.median([r[2] for r in rs])))
    res["dattri TRAK"] = dattri_trak(model, train, test, k, 250)
    sd, td = dattri_tracin(model, train, test, k, 500)
    res["dattri TracIn"] = (sd, float("nan"), td)
    print(f"{'method':16s} {'feat ex/s':>10s} {'total s':>9s} {'LDS':>7s}  95% CI")
    lds_of = {}
    for name, (s, tf, tt) in res.items():
        r = lds(s, truth.masks, truth.values)
        lds_of[name] = r.mean
        rate = n / tf if tf == tf else float("nan")
        print(f"{name:16s} {rate:10.0f} {tt:9.2f} {r.mean:7.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]")
    seed_lds = {name: [lds(r[0], truth.masks, truth.values).mean for r in rs] for name, rs in runs.items()}
    for name, v in seed_lds.items():
        print(f"{name}: LDS over {len(v)} projection seeds {np.mean(v):.3f} ± {np.std(v):.3f} (each: "
              + ", ".join(f"{x:.3f}" for x in v) + ")")
    best_peer = min(res["traker TRAK"][2], res["dattri TRAK"][2])
    speedup = best_peer / res["assay TRAK"][2]
    feat_speedup = n / res["assay TRAK"][1] / max(n / res["traker TRAK"][1], n / res["dattri TRAK"][1])
    tracin_speedup = res["dattri TracIn"][2] / res["assay TracIn"][2]
    print(f"TRAK total-time speed-up vs best peer: {speedup:.1f}x (featurisation {feat_speedup:.1f}x); "
          f"TracIn vs dattri: {tracin_speedup:.1f}x; LDS assay {lds_of['assay TRAK']:.3f} vs traker "
          f"{lds_of['traker TRAK']:.3f}")
    return {
        "speedup_vs_best_peer": round(speedup, 2),
        "featurisation_speedup_vs_best_peer": round(feat_speedup, 2),
        "tracin_speedup_vs_dattri": round(tracin_speedup, 2),
        "lds": {k_: round(v, 4) for k_, v in lds_of.items()},
        "lds_over_seeds": {k_: [round(x, 4) for x in v] for k_, v in seed_lds.items()},
        "assay_trak_total_s": round(res["assay TRAK"][2], 3),
    }


DATTRI_MNIST_LR = {"IF-explicit": 0.80, "TracIn/Grad-Dot": 0.33, "TRAK-10": 0.64}
"""dattri's published LDS on MNIST logistic regression (5,000 / 500; read off the README's bar chart, ±0.02)."""


def dattri_digits_section(args) -> dict:
    """LDS of assay and dattri in one setting: sklearn digits (8×8, the offline MNIST stand-in; MNIST itself
    is not available here), L2 logistic regression, dattri's protocol (50% subsets, −loss ground truth).
    Both libraries score the same models; LDS by assay's ``lds`` and by ``dattri.metric.lds``."""
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.metric import lds as dattri_lds
    from dattri.task import AttributionTask
    from sklearn.datasets import load_digits

    from assay.data_attribution import influence

    n_train, n_test, l2, k = 1000, 500, 1e-2, 512
    d = load_digits()
    perm = torch.randperm(len(d.target), generator=torch.Generator().manual_seed(0))
    x = torch.tensor(d.data, dtype=torch.float32)[perm] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)[perm]
    tr, te = (x[:n_train], y[:n_train]), (x[n_train : n_train + n_test], y[n_train : n_train + n_test])
    fn = partial(retrain.logreg_target_values, x_train=tr[0], y_train=tr[1], x_target=te[0], y_target=te[1],
                 n_classes=10, l2=l2)
    cfg = retrain.RetrainConfig(n_subsets=50, fraction=0.5, seed=0, n_workers=args.workers)
    truth = retrain.retrain(fn, n_train, cfg, cache_dir=args.cache_dir, key=f"dattri-digits-lr-{n_train}-{n_test}-{l2}")
    model = retrain.fit_logreg(*tr, 10, l2=l2)
    g = torch.Generator().manual_seed(1)  # TRAK-10: ten refits on random 80% subsets (L-BFGS fits are deterministic)
    models = [model] + [retrain.fit_logreg(tr[0][i], tr[1][i], 10, l2=l2)
                        for i in (torch.randperm(n_train, generator=g)[: int(0.8 * n_train)] for _ in range(9))]
    train_dl, test_dl = _dattri_loaders(tr, te, n_train)

    def ce(params, data, m=model):
        xx, yy = data
        out = torch.func.functional_call(m, params, xx.unsqueeze(0) if xx.dim() == 1 else xx)
        return torch.nn.functional.cross_entropy(out, yy.unsqueeze(0) if yy.dim() == 0 else yy)

    def prob(params, data, m=model):
        xx, yy = data
        return torch.softmax(torch.func.functional_call(m, params, xx.unsqueeze(0)), -1)[0, yy]

    scores = {}
    # IF-explicit: H = ∇² mean CE + l2·I (the loss the models minimise)
    h = influence.loss_hessian(model, *tr, l2=l2)
    gtr, gte = grads.per_example_grads(model, *tr), grads.per_example_grads(model, *te)
    scores["IF-explicit", "assay"] = influence.influence_scores(gtr, influence.solve_explicit(h, gte.T))
    att = IFAttributorExplicit(task=AttributionTask(loss_func=ce, model=model, checkpoints=model.state_dict()),
                               regularization=l2)
    att.cache(train_dl)
    scores["IF-explicit", "dattri"] = att.attribute(train_dl, test_dl).detach()
    # Grad-Dot (TracIn with one checkpoint), loss gradients projected to k
    cfgp = ProjectionConfig(dim=k, seed=0)
    scores["TracIn/Grad-Dot", "assay"] = tracin.tracin_scores(
        [featurize(model, *tr, projection=cfgp, out_fn=grads.cross_entropy)],
        [featurize(model, *te, projection=cfgp, out_fn=grads.cross_entropy)])
    kwargs = {"proj_dim": k, "proj_max_batch_size": 32, "proj_seed": 0, "device": "cpu"}
    att = TracInAttributor(task=AttributionTask(loss_func=ce, model=model, checkpoints=model.state_dict()),
                           weight_list=torch.ones(1), normalized_grad=False, projector_kwargs=dict(kwargs))
    scores["TracIn/Grad-Dot", "dattri"] = att.attribute(train_dl, test_dl).detach()
    # TRAK-10 over the same ten models
    cks, gs = [], []
    for m in models:
        phi, q = trak.trak_featurize(m, *tr, projection=cfgp)
        cks.append(trak.trak_finalize(phi, q))
        gs.append(trak.trak_featurize(m, *te, projection=cfgp)[0])
    scores["TRAK-10", "assay"] = trak.trak_scores(cks, gs)

    def margin(params, data):
        xx, yy = data
        out = torch.func.functional_call(model, params, xx.unsqueeze(0) if xx.dim() == 1 else xx)
        return grads.margin(out, yy.unsqueeze(0) if yy.dim() == 0 else yy).sum()

    att = TRAKAttributor(task=AttributionTask(loss_func=margin, model=model, checkpoints=[m.state_dict() for m in models]),
                         correct_probability_func=prob, projector_kwargs=dict(kwargs), device="cpu")
    att.cache(train_dl)
    scores["TRAK-10", "dattri"] = att.attribute(test_dl).detach()
    idx = torch.stack([mk.nonzero().squeeze(1) for mk in truth.masks])
    print(f"dattri setting check: digits LR ({n_train} train / {n_test} targets, 50 subsets of 50%, l2 {l2}, proj "
          f"{k}); dattri's published MNIST-LR (5,000 / 500) for reference")
    print(f"{'method':16s} {'assay LDS':>18s} {'dattri LDS':>18s} {'metric parity':>14s} {'published MNIST-LR':>19s}")
    out = {}
    for meth, pub in DATTRI_MNIST_LR.items():
        row = {}
        for lib in ("assay", "dattri"):
            r = lds(scores[meth, lib], truth.masks, truth.values)
            theirs = float(dattri_lds(scores[meth, lib], (truth.values, idx))[0].nanmean())
            row[lib] = (r, theirs)
        par = max(abs(row[lib][0].mean - row[lib][1]) for lib in row)
        print(f"{meth:16s} " + " ".join(f"{row[lib][0].mean:7.3f} [{row[lib][0].ci_low:.2f},{row[lib][0].ci_high:.2f}]"
                                        for lib in ("assay", "dattri")) + f" {par:14.1e} {pub:19.2f}")
        out[meth] = {"assay": round(row["assay"][0].mean, 4), "dattri": round(row["dattri"][0].mean, 4),
                     "published_mnist_lr": pub}
    return {"dattri_digits_lr_lds": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--proj-dim", type=int, default=1024)
    ap.add_argument("--n-subsets", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=20)
    ap.add_argument("--group-dim", type=int, default=256, help="projection dim of the group comparison (both sides)")
    ap.add_argument("--group-lambdas", type=float, nargs="+", default=[0.0, 1.0, 10.0],
                    help="λ (relative to the kernel's mean diagonal) swept for pointwise and group TRAK alike")
    ap.add_argument("--targets", nargs="+", default=["points"],
                    help="group section: points (per-example targets), mean (the property f = mean loss over the "
                         "targets: one gradient) and/or classC (mean loss over the targets of class C)")
    ap.add_argument("--time-repeats", type=int, default=3,
                    help="group section: train-side timings are the median of this many calls (both sides)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3, help="projection seeds for assay and traker TRAK")
    ap.add_argument("--only", choices=["all", "peers", "groups", "dattri-digits"], default="all")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "assay-bench-da"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.proj_dim, args.n_subsets, args.epochs = 1000, 100, 512, 12, 4
        args.group_size, args.seeds = 10, 1
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    x, y = make_data(args.n_train + args.n_test, 100, seed=0)
    train, test = (x[: args.n_train], y[: args.n_train]), (x[args.n_train :], y[args.n_train :])
    model = train_model(*train, seed=0, epochs=args.epochs)
    with torch.no_grad():
        acc = float((model(test[0]).argmax(-1) == test[1]).float().mean())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MLP 100-256-256-10: {n_params} parameters, test accuracy {acc:.3f}; n_train {args.n_train}, "
          f"n_test {args.n_test}, proj_dim {args.proj_dim}, torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    n = args.n_train
    fn = partial(mlp_target_values, x_train=train[0], y_train=train[1], x_target=test[0], y_target=test[1],
                 epochs=args.epochs)
    cfg = retrain.RetrainConfig(n_subsets=args.n_subsets, fraction=0.5, seed=0, n_workers=args.workers)
    truth = None
    if args.only in ("all", "peers"):  # pointwise LDS ground truth (the group section retrains on unions of groups)
        truth, t_rt = timed(lambda: retrain.retrain(fn, n, cfg, cache_dir=args.cache_dir,
                                                    key=f"bench-mlp-{n}-{args.n_test}-{args.epochs}"))
        print(f"retraining ground truth: {args.n_subsets} subsets in {t_rt:.1f}s (cached across runs)")
    out = {}
    if args.only in ("all", "peers"):
        out.update(peers_section(model, train, test, args, truth))
    if args.only in ("all", "groups"):
        out.update(groups_section(model, train, test, args, fn, cfg, truth))
    if args.only in ("all", "dattri-digits"):
        out.update(dattri_digits_section(args))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
