"""Group attribution (GGDA; Ley et al. 2024, "Generalized Group Data Attribution") vs pointwise, for
benchmarks/data_attribution.py (``--only groups``).

One work definition for both sides, all timed: featurise train (+ kernel and its inverse) + target side +
score, on the generic (any-module) path — pointwise: ``vmap`` per-example gradients + block-regenerated
dense R; group: one gradient per group (``vmap`` over groups of the gradient of the group's summed output)
+ dense R on K rows. Same projection dim, same λ (relative to each kernel's mean diagonal). The target
side is the same code on the same inputs for both: per-example features of the targets
(``--target points``) or one gradient of the property f = mean over the targets (``--target mean``,
:mod:`assay.data_attribution.property`). Quality: group-LDS on retrainings over unions of groups (the
pointwise scores summed over the same groups), or property-LDS (Spearman over the retrained subsets between
predicted and actual change of the mean −loss) with a paired bootstrap interval over subsets.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from assay.data_attribution import grads, group_trak, groups, retrain, tracin, trak
from assay.data_attribution.featurize import featurize
from assay.data_attribution.projection import ProjectionConfig, project_dense
from assay.data_attribution.property import mean_property, property_features
from assay.evaluate.lds import expand_group_masks, lds
from assay.stats import spearman


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median_timed(fn, repeats: int = 3):
    """(output of the first call, median seconds of ``repeats`` calls)."""
    runs = [timed(fn) for _ in range(repeats)]
    return runs[0][0], float(np.median([r[1] for r in runs]))


def target_property(test, target: str):
    """The property of a target name: ``mean`` (mean over the targets) or ``classC`` (over those of class C);
    None for ``points``."""
    if target == "points":
        return None
    if target == "mean":
        return mean_property(*test)
    return mean_property(*test, subset=test[1] == int(target.removeprefix("class")))


def target_side(model, test, target: str, cfg: ProjectionConfig, out_fn, batch: int):
    """Target features ``[m, k]`` (per example) or ``[1, k]`` (one property gradient), unscaled, and their
    median time — the same code on the same inputs for the pointwise and the group side."""
    prop = target_property(test, target)
    if prop is None:
        return median_timed(lambda: featurize(model, *test, projection=cfg, out_fn=out_fn, method="dense",
                                              batch_size=batch))
    return median_timed(lambda: property_features(model, prop, projection=cfg, out_fn=out_fn, method="dense",
                                                  batch_size=batch))


def pointwise_trak_finalize(phi, q, lam):
    """Kernel and inverse, λ relative to its mean diagonal (as group TRAK); returns (checkpoint, seconds)."""
    lam_abs = lam * float((phi.double() ** 2).sum(0).mean())
    return timed(lambda: trak.trak_finalize(phi, q, lambda_reg=lam_abs))


def profile_train_side(model, train, gid, cfg, batch, n_sample: int = 500) -> dict:
    """Where the train-side time goes: pointwise per-example gradients vs their projection (on ``n_sample``
    rows, scaled to n), group gradients vs their projection (all groups)."""
    n = train[0].shape[0]
    xs, ys = train[0][:n_sample], train[1][:n_sample]
    g, t_grad = timed(lambda: grads.per_example_grads(model, xs, ys, out_fn=grads.margin, chunk_size=batch))
    _, t_proj = timed(lambda: project_dense(g, cfg))
    n_groups = int(gid.max()) + 1
    gg, t_ggrad = timed(lambda: grads.group_grads(model, *train, gid, n_groups=n_groups, out_fn=grads.margin))
    _, t_gproj = timed(lambda: project_dense(gg, cfg))
    scale = n / xs.shape[0]
    return {"pointwise_grads_s": t_grad * scale, "pointwise_projection_s": t_proj * scale,
            "group_grads_s": t_ggrad, "group_projection_s": t_gproj}


def paired_bootstrap(preds: list[torch.Tensor], value: torch.Tensor, n_boot: int = 2000, seed: int = 0):
    """Spearman of each prediction ``[M]`` with ``value [M]`` on ``n_boot`` resamples of the subsets ``[n_boot, len]``."""
    idx = torch.randint(0, value.shape[0], (n_boot, value.shape[0]), generator=torch.Generator().manual_seed(seed))
    return torch.stack([spearman(p.double()[idx], value.double()[idx], dim=1) for p in preds], 1)


def _quality(scores, gmasks, values, test, target):
    """group-LDS (mean over targets, with its interval) or property-LDS (one Spearman over subsets; values
    are −loss per target, so the property's value is their weighted mean)."""
    prop = target_property(test, target)
    if prop is None:
        return lds(scores, gmasks, values), values
    value = values @ prop.weights.to(values.dtype)[:, None]
    return lds(scores, gmasks, value), value[:, 0]


def groups_section(model, train, test, args, fn, cfg_retrain, truth=None) -> dict:
    """GGDA vs pointwise (module docstring) for each of ``args.targets``; returns the JSON summary. The train
    side (features, kernels, inverses) is computed once and timed once, then counted in every target's total."""
    n, k, batch = args.n_train, args.group_dim, 500
    per_class = max(1, round(n / 10 / args.group_size))
    gid = groups.groups_by_class(train[1], per_class=per_class, generator=torch.Generator().manual_seed(0))
    gid, n_groups = groups.check_groups(gid, n)
    gmasks = retrain.subset_masks(n_groups, args.n_subsets, 0.5, seed=1)
    gtruth, t_rt = timed(lambda: retrain.retrain(fn, n, cfg_retrain, cache_dir=args.cache_dir,
                                                 key=f"bench-mlp-{n}-{args.n_test}-{args.epochs}",
                                                 masks=expand_group_masks(gmasks, gid)))
    print(f"group retraining ground truth: {args.n_subsets} subsets (unions of half the groups) in {t_rt:.1f}s (cached)")
    cfg = ProjectionConfig(dim=k, seed=0, block_rows=16384)
    root_p = math.sqrt(sum(p.numel() for p in model.parameters()))
    reps = args.time_repeats  # the same statistic for both sides: median of ``reps`` calls
    (phi, q), t_ftrain = median_timed(lambda: trak.trak_featurize(model, *train, projection=cfg, method="dense",
                                                                  batch_size=batch), reps)
    pw = {lam: pointwise_trak_finalize(phi, q, lam) for lam in args.group_lambdas}
    grp = {}
    for lam in args.group_lambdas:
        for kernel in ("group", "signed"):
            try:
                grp[kernel, lam] = median_timed(lambda kernel=kernel, lam=lam: group_trak.group_trak_checkpoint(
                    model, *train, gid, projection=cfg, kernel=kernel, lambda_reg=lam, method="dense", batch_size=batch), reps)
            except ValueError as e:  # K rows < k dims with λ = 0: singular, say so
                print(f"group kernel {kernel!r}, lambda {lam:g}: n/a: {str(e)[:90]}…")
    print(f"groups: K={n_groups} (each class split at random, ≈{args.group_size} per group), n={n}, m={args.n_test} "
          f"targets; proj dim {k} for both, generic path. Train side timed once per kernel and λ as the median of "
          f"{reps} calls (pointwise featurisation {t_ftrain:.2f}s + kernel; group checkpoints) and counted for every "
          "target")
    print("timed work, both sides: featurise train (+ kernel, inverse) | target side | score; the target side is "
          "identical for both (per-example features, or one property gradient), median of 3, counted in both")
    out = {"group_n_train": n, "group_k": n_groups, "group_retrain_s": round(t_rt, 1), "targets": {}}
    for target in args.targets:
        out["targets"][target] = _one_target(model, test, target, cfg, batch, root_p, gid, n_groups, gmasks, gtruth,
                                             t_ftrain, pw, grp, args, truth)
    prof = profile_train_side(model, train, gid, cfg, batch)
    out["group_profile_s"] = {k_: round(v, 3) for k_, v in prof.items()}
    print("train-side profile (s): " + ", ".join(f"{k_} {v:.2f}" for k_, v in prof.items())
          + " (pointwise measured on 500 rows, scaled to n)")
    # TracIn (Grad-Dot, one checkpoint): loss gradients on both sides, first target only
    target = args.targets[0]
    gl, t_tl = target_side(model, test, target, cfg, grads.cross_entropy, batch)
    phi_l, t_pl = timed(lambda: featurize(model, *train, projection=cfg, out_fn=grads.cross_entropy, method="dense",
                                          batch_size=batch))
    s_pl, t_spl = timed(lambda: tracin.tracin_scores([phi_l], [gl]))
    phi_g, t_gl = median_timed(lambda: group_trak.group_features(model, *train, gid, projection=cfg,
                                                                 out_fn=grads.cross_entropy, method="dense",
                                                                 batch_size=batch))
    s_gl, t_sgl = timed(lambda: tracin.tracin_scores([phi_g], [gl]))
    t_point, t_group = t_pl + t_tl + t_spl, t_gl + t_tl + t_sgl
    lp = _quality(groups.group_sum(s_pl, gid, n_groups), gmasks, gtruth.values, test, target)[0]
    lg = _quality(s_gl, gmasks, gtruth.values, test, target)[0]
    print(f"TracIn ({target}) pointwise (generic path) {t_point:.2f}s, group {t_group:.2f}s -> {t_point / t_group:.1f}x; "
          f"LDS group {lg.mean:.3f} vs pointwise summed {lp.mean:.3f}")
    out.update({"group_tracin_speedup": round(t_point / t_group, 2),
                "group_tracin_lds_ratio": round(lg.mean / lp.mean, 3)})
    return out


def _one_target(model, test, target, cfg, batch, root_p, gid, n_groups, gmasks, gtruth, t_ftrain, pw, grp, args,
                truth) -> dict:
    g, t_ftest = target_side(model, test, target, cfg, grads.margin, batch)
    g = g / root_p
    metric = "group-LDS" if target == "points" else "property-LDS"
    print(f"\n== target {target}: {metric}; target side {t_ftest:.3f}s ==")
    print(f"{'TRAK':18s} {'lambda':>7s} {'train s':>8s} {'test s':>7s} {'score s':>8s} {'total s':>8s} "
          f"{'speed-up':>8s} {metric:>12s}  95% CI over targets  ratio")
    rows = {}
    for lam in args.group_lambdas:
        ck, t_kernel = pw[lam]
        s, t_score = timed(lambda ck=ck: trak.trak_scores([ck], [g]))
        r, value = _quality(groups.group_sum(s, gid, n_groups), gmasks, gtruth.values, test, target)
        t = (t_ftrain + t_kernel, t_ftest, t_score)
        rows[("pointwise", lam)] = (t, r, s)
        extra = "" if truth is None or target != "points" else f"  (pointwise LDS {lds(s, truth.masks, truth.values).mean:.3f})"
        print(f"{'pointwise (summed)':18s} {lam:7g} {t[0]:8.2f} {t[1]:7.3f} {t[2]:8.3f} {sum(t):8.2f} {'1.0x':>8s} "
              f"{r.mean:12.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]{extra}")
        for kernel in ("group", "signed"):
            if (kernel, lam) not in grp:
                continue
            ckg, tt = grp[kernel, lam]
            sg, tsc = timed(lambda ckg=ckg: trak.trak_scores([ckg], [g]))
            rg = _quality(sg, gmasks, gtruth.values, test, target)[0]
            tg = (tt, t_ftest, tsc)
            rows[(kernel, lam)] = (tg, rg, sg)
            print(f"{'group, ' + kernel:18s} {lam:7g} {tg[0]:8.2f} {tg[1]:7.3f} {tg[2]:8.3f} {sum(tg):8.2f} "
                  f"{sum(t) / sum(tg):7.1f}x {rg.mean:12.3f}  [{rg.ci_low:.3f}, {rg.ci_high:.3f}]  "
                  f"{rg.mean / r.mean:5.2f}")
    # headline: λ at which pointwise TRAK's group-LDS is best (the baseline at its best); literal GGDA kernel
    best = max((lam_ for lam_ in args.group_lambdas if ("group", lam_) in rows),
               key=lambda lam_: rows[("pointwise", lam_)][1].mean)
    (tp, rp, sp), (tg, rg, sg) = rows[("pointwise", best)], rows[("group", best)]
    group_speedup, ratio, train_speedup, cap = sum(tp) / sum(tg), rg.mean / rp.mean, tp[0] / tg[0], sum(tp) / tp[1]
    out = {"group_speedup": round(group_speedup, 2), "group_train_speedup": round(train_speedup, 2),
           "group_speedup_cap_from_target_side": round(cap, 2), "group_lds_ratio": round(ratio, 3),
           "group_lds": round(rg.mean, 4), "pointwise_group_lds": round(rp.mean, 4), "group_lambda": best,
           "table": {f"{name} lam={lam:g}": {"total_s": round(sum(t), 3), "lds": round(r.mean, 4)}
                     for (name, lam), (t, r, _) in rows.items()}}
    boot = ""
    if target != "points":  # one Spearman per side: a paired bootstrap over the retrained subsets
        bs = paired_bootstrap([gmasks.double() @ groups.group_sum(sp, gid, n_groups)[:, 0].double(),
                               gmasks.double() @ sg[:, 0].double()], value)
        lo, hi = np.nanpercentile(bs.numpy(), [2.5, 97.5], axis=0)
        rlo, rhi = np.nanpercentile((bs[:, 1] / bs[:, 0]).numpy(), [2.5, 97.5])
        out.update({"pointwise_ci": [round(lo[0], 3), round(hi[0], 3)], "group_ci": [round(lo[1], 3), round(hi[1], 3)],
                    "ratio_ci": [round(float(rlo), 3), round(float(rhi), 3)]})
        boot = (f"; paired bootstrap over subsets (2,000): pointwise [{lo[0]:.3f}, {hi[0]:.3f}], group "
                f"[{lo[1]:.3f}, {hi[1]:.3f}], ratio [{rlo:.2f}, {rhi:.2f}]")
    print(f"headline {target} (lambda {best:g}, best pointwise {metric}; kernel 'group'): total {sum(tp):.2f}s -> "
          f"{sum(tg):.2f}s = {group_speedup:.1f}x (train side alone {train_speedup:.1f}x); {metric} {rg.mean:.3f} vs "
          f"pointwise summed {rp.mean:.3f} = ratio {ratio:.2f}{boot}. The target side ({tp[1]:.3f}s) is common to "
          f"both: it caps the total speed-up at {cap:.1f}x")
    return out
