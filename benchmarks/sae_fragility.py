"""SAE fragility on real settings: how often a small input perturbation rewrites an SAE's code while the
model's output stays put (Li, Srinivas, Bhalla & Lakkaraju 2025/2026, "Interpretability Illusions with
Sparse Autoencoders: Evaluating Robustness of Concept Representations").

(a) World model: the zoo's tiny Dyck transformer (``world_model("dyck")``, 2 layers, d_model 64). One
small SAE per architecture (relu, topk, batchtopk, jumprelu, matryoshka, mp) is trained on its
residual stream after block 0; the continuous attack (:func:`fragility_attack`, L2 PGD on the token
embeddings of a 16-token prefix, read at the last position) is run untargeted (|S(x′) ∩ S(x)|/|S(x)| ≤
0.5) and "activate" (make the most common latent that is off at x fire), both under KL(p(x) ‖ p(x′)) ≤
κ of the next-token distribution. A random direction of the same norm is the baseline.

(b) SmolLM2-135M: a TopK SAE (d_sae 1152, k 32) trained on a short store of ``model.layers.15``
(cached with the store and the SAE under ``--out``, so re-runs skip both); the token-level attack
(:func:`token_fragility_attack`, generalised GCG, token replacement in the prompt's text) on a handful
of prompts read at the last token of the template " \\nThe previous text is about" (as in the paper).
A random replacement of as many tokens is the baseline.

    nice .venv/bin/python benchmarks/sae_fragility.py [--skip-lm | --skip-world] [--out runs/sae_fragility]

Per row: success rate with a Wilson 95% interval, median perturbation size of the successes (relative
L2 for (a), edited tokens for (b)), the largest KL of a success (always ≤ κ) and the baseline's rate.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from assay.bench.sae_fragility import (
    SAE_ARCHS,
    common_off_latent,
    embeds_forward,
    sae_quality,
    site_rows,
    train_sae,
)
from assay.stats import wilson_interval

TEMPLATE = " \nThe previous text is about"
PROMPTS = (
    "The cat sat on the warm windowsill and watched the birds in the garden.",
    "Interest rates rose again this quarter, and the central bank signalled more to come.",
    "She tuned the violin carefully before the concert began.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our team fixed the memory leak in the database server last night.",
    "The mountain trail was steep, rocky and covered in fresh snow.",
    "He scored the winning goal in the final minute of the match.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
)


class Row(NamedTuple):
    """One benchmark row."""

    setting: str
    """Model, SAE architecture and objective."""
    n: int
    """Attacked examples."""
    success_rate: float
    """Fraction with the objective met and KL ≤ κ."""
    ci_low: float
    """Wilson 95% lower bound."""
    ci_high: float
    """Wilson 95% upper bound."""
    median_size: float
    """Median perturbation size of the successes (relative L2, or edited tokens)."""
    max_kl: float
    """Largest KL of a success (nan if none)."""
    kl_bound: float
    """κ."""
    baseline_rate: float
    """Success rate of a random perturbation of the same size."""


def make_row(setting: str, success: torch.Tensor, size: torch.Tensor, kl: torch.Tensor, kl_bound: float,
             baseline: torch.Tensor) -> Row:
    k, n = int(success.sum()), success.numel()
    lo, hi = (float(v) for v in wilson_interval(k, n))
    med = float(size[success].median()) if k else float("nan")
    mkl = float(kl[success].max()) if k else float("nan")
    return Row(setting, n, k / n, lo, hi, med, mkl, kl_bound, float(baseline.float().mean()))


# ----- (a) world model -----------------------------------------------------------------------------------

def world_fragility(model: torch.nn.Module, sae, tokens: torch.Tensor, site: str, *, objective: str,
                    eps_rel: float = 0.5, steps: int = 50, kl_bound: float = 0.01, overlap_threshold: float = 0.5,
                    acts: torch.Tensor | None = None, seed: int = 0):
    """Continuous attack on the token embeddings of ``tokens [B, T]`` against ``sae`` at ``site``.

    ε = ``eps_rel`` × the median L2 norm of an example's embeddings. Returns (FragilityResult,
    baseline FragilityResult, clean embeddings, latent or None)."""
    from assay.robustness.sae_fragility import fragility_attack, random_baseline

    with torch.no_grad():
        x = model.embed(tokens)
    fwd = embeds_forward(model, site)
    eps = eps_rel * float(x.flatten(1).norm(dim=1).median())
    latent = None
    if objective in ("activate", "deactivate"):
        h0, _ = fwd(x)
        latent = common_off_latent(sae, h0.detach(), acts if acts is not None else h0.detach())
    res = fragility_attack(fwd, sae, x, objective=objective, latent=latent, eps=eps, steps=steps,
                           kl_bound=kl_bound, overlap_threshold=overlap_threshold)
    sizes = torch.where(res.success, res.perturbation_norm, torch.full_like(res.perturbation_norm, eps))
    base = random_baseline(fwd, sae, x, sizes, objective=objective, latent=latent, kl_bound=kl_bound,
                           overlap_threshold=overlap_threshold, generator=torch.Generator().manual_seed(seed))
    return res, base, x, latent


def run_world(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    from assay.models.zoo import world_model
    from assay.worlds.base import make_generator

    wm = world_model("dyck", progress=False)
    model = wm.model.eval().requires_grad_(False)
    T = model.config.context
    seqs = wm.world.sample(args.n_seq, generator=make_generator(args.seed)).inputs[:, :T]
    acts = site_rows(model, seqs, args.site)
    long = seqs[(seqs[:, :args.prefix] != 0).all(1)][:, :args.prefix]
    attack = long[:args.n_attack]
    print(f"world: dyck model {wm.path.name}, site {args.site}, {acts.shape[0]} activation rows, "
          f"{attack.shape[0]} attacked prefixes of {args.prefix} tokens", flush=True)
    rows, info = [], {}
    for arch in args.archs:
        t0 = time.perf_counter()
        sae = train_sae(arch, acts, d_sae=args.d_sae, k=args.k, steps=args.sae_steps, batch_size=512, seed=args.seed)
        l0, fvu = sae_quality(sae, acts)
        t_train = time.perf_counter() - t0
        info[arch] = {"l0": l0, "fvu": fvu, "train_s": t_train}
        for objective in ("untargeted", "activate"):
            t0 = time.perf_counter()
            res, base, x, _ = world_fragility(model, sae, attack, args.site, objective=objective,
                                              eps_rel=args.eps_rel, steps=args.steps, kl_bound=args.kl_bound,
                                              acts=acts, seed=args.seed)
            row = make_row(f"dyck {arch} {objective}", res.success, res.relative_perturbation, res.kl,
                           args.kl_bound, base.success)
            rows.append(row)
            info[arch][objective] = {**row._asdict(), "attack_s": time.perf_counter() - t0}
            print_row(row, f"L0 {l0:.1f} FVU {fvu:.3f}")
    return rows, info


# ----- (b) SmolLM2 ---------------------------------------------------------------------------------------

def lm_sae(args: argparse.Namespace, loaded: Any):
    """The SmolLM2 TopK SAE: loaded from ``out/lm_sae`` when present, else cached store + trained."""
    from assay.cli.cache import run_cache
    from assay.dictionaries.registry import load_sae
    from assay.dictionaries.store_run import StoreSAEConfig, train_sae_on_store
    from assay.store import ActivationStore
    from assay.store.corpus_cache import CacheConfig

    out = Path(args.out)
    sae_dir = out / "lm_sae"
    if (sae_dir / "config.json").exists():
        meta = json.loads((sae_dir / "config.json").read_text()).get("meta", {})
        return load_sae(sae_dir).eval(), {"cached": True, **meta}
    t0 = time.perf_counter()
    cache = CacheConfig(model="smollm2-135m", sites=(args.lm_site,), n_tokens=args.lm_tokens, context_length=128,
                        batch_size=8, shard_rows=8192, out_dir=out / "store")
    run_cache(cache, quiet=True)
    t_cache = time.perf_counter() - t0
    cfg = StoreSAEConfig(architecture="topk", expansion=args.lm_expansion, k=32, steps=args.lm_sae_steps,
                         batch_size=1024, lr=1e-3, warmup_steps=max(1, args.lm_sae_steps // 20), holdout_windows=8,
                         decay_fraction=0.2)  # as its documented figures (the old default)
    with ActivationStore.open(cache.store_dir, verify="open") as store:
        res = train_sae_on_store(store, args.lm_site, cfg, model=loaded.model, out=sae_dir,
                                 checkpoint=out / "lm_sae.ckpt")
    meta = {"cached": False, "cache_s": t_cache, "train_s": res.train_seconds, "heldout_fvu": res.reconstruction.fvu,
            "heldout_l0": res.sparsity.l0, "ce_recovered": res.spliced.ce_recovered}
    return res.sae.eval(), meta


def prompt_tokens(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([1, T] ids = BOS + text + template, editable mask [T] over the text's tokens)."""
    body = tokenizer(text, add_special_tokens=False).input_ids
    tail = tokenizer(TEMPLATE, add_special_tokens=False).input_ids
    ids = [tokenizer.bos_token_id, *body, *tail]
    editable = torch.zeros(len(ids), dtype=torch.bool)
    editable[1:1 + len(body)] = True
    return torch.tensor([ids]), editable


def random_token_baseline(fwd, embedding: torch.Tensor, tokens: torch.Tensor, editable: torch.Tensor, sae,
                          n_edits: int, *, kl_bound: float, overlap_threshold: float, generator: torch.Generator,
                          trials: int = 8) -> float:
    """Fraction of ``trials`` random replacements of ``n_edits`` editable tokens that meet the objective."""
    from assay.robustness.sae_fragility import active_set_overlap

    pos = torch.nonzero(editable).flatten()
    trial = tokens.repeat(trials, 1)
    for t in range(trials):
        where = pos[torch.randperm(pos.numel(), generator=generator)[:max(1, n_edits)]]
        trial[t, where] = torch.randint(0, embedding.shape[0], (where.numel(),), generator=generator)
    with torch.no_grad():
        h0, l0 = fwd(embedding[tokens])
        h, logits = fwd(embedding[trial])
        ov = active_set_overlap(sae.encode(h), sae.encode(h0).expand(trials, -1))
        kl = (l0.log_softmax(-1).exp() * (l0.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)
    return float(((ov <= overlap_threshold) & (kl <= kl_bound)).float().mean())


def run_lm(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    from assay.models import offline
    from assay.robustness.sae_fragility import site_forward, token_fragility_attack

    loaded = offline.load("smollm2-135m")
    model = loaded.model.eval().requires_grad_(False)
    t0 = time.perf_counter()
    sae, meta = lm_sae(args, loaded)
    meta["sae_s"] = time.perf_counter() - t0
    print(f"lm: SmolLM2-135M {args.lm_site}, TopK SAE d_sae {sae.d_sae} k 32: {meta}", flush=True)
    emb = model.get_input_embeddings().weight.detach()
    fwd = site_forward(model, args.lm_site, position=-1, call=lambda m, e: m(inputs_embeds=e))
    succ, size, kls, base, per = [], [], [], [], []
    t0 = time.perf_counter()
    for i, text in enumerate(PROMPTS[:args.n_prompts]):
        tokens, editable = prompt_tokens(loaded.tokenizer, text)
        g = torch.Generator().manual_seed(args.seed + i)
        res = token_fragility_attack(fwd, emb, tokens, sae, editable=editable, objective="untargeted",
                                     iters=args.lm_iters, top_k=args.lm_top_k, n_candidates=args.lm_candidates,
                                     kl_bound=args.lm_kl_bound, overlap_threshold=0.5, generator=g)
        n_ed = int(res.n_edits[0])
        b = random_token_baseline(fwd, emb, tokens, editable, sae, n_ed, kl_bound=args.lm_kl_bound,
                                  overlap_threshold=0.5, generator=g)
        succ.append(bool(res.success[0]))
        size.append(float(n_ed))
        kls.append(float(res.kl[0]))
        base.append(b)
        per.append({"prompt": text, "success": succ[-1], "n_edits": n_ed, "editable": int(editable.sum()),
                    "overlap": float(res.overlap[0]), "kl": kls[-1], "baseline": b,
                    "edited": loaded.tokenizer.decode(res.tokens[0, 1:1 + int(editable.sum())])})
        print(f"  {per[-1]}", flush=True)
    row = make_row("smollm2-135m topk untargeted (tokens)", torch.tensor(succ), torch.tensor(size),
                   torch.tensor(kls), args.lm_kl_bound, torch.tensor(base))
    print_row(row, "size = edited tokens")
    return [row], {**meta, "attack_s": time.perf_counter() - t0, "prompts": per}


def finite(v: Any) -> Any:
    """``v`` with nan/inf floats as None (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite(x) for x in v]
    return v


def print_row(r: Row, extra: str = "") -> None:
    print(f"{r.setting:<42} success {r.success_rate:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] (n={r.n})  "
          f"size {r.median_size:.3g}  max KL {r.max_kl:.2g} <= {r.kl_bound:g}  random {r.baseline_rate:.2f}  {extra}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="+", default=list(SAE_ARCHS))
    ap.add_argument("--site", default="blocks.0")
    ap.add_argument("--n-seq", type=int, default=768)
    ap.add_argument("--prefix", type=int, default=16)
    ap.add_argument("--n-attack", type=int, default=64)
    ap.add_argument("--d-sae", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sae-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps-rel", type=float, default=0.5)
    ap.add_argument("--kl-bound", type=float, default=0.01)
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--skip-world", action="store_true")
    ap.add_argument("--out", default="runs/sae_fragility")
    ap.add_argument("--lm-site", default="model.layers.15")
    ap.add_argument("--lm-tokens", type=int, default=32_768)
    ap.add_argument("--lm-expansion", type=int, default=2)
    ap.add_argument("--lm-sae-steps", type=int, default=400)
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--lm-iters", type=int, default=20)
    ap.add_argument("--lm-top-k", type=int, default=32)
    ap.add_argument("--lm-candidates", type=int, default=64)
    ap.add_argument("--lm-kl-bound", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, world_info = run_world(args) if not args.skip_world else ([], {})
    lm_info: dict[str, Any] = {}
    if not args.skip_lm:
        lm_rows, lm_info = run_lm(args)
        rows += lm_rows
    print(json.dumps(finite({"rows": [r._asdict() for r in rows], "world": world_info, "lm": lm_info,
                             "seconds": time.perf_counter() - t0})))


if __name__ == "__main__":
    main()
