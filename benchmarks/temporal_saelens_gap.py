"""How far SAELens' TemporalSAE is from assay's when the context code is TopK-sparse (why the export refuses k < d_sae).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/temporal_saelens_gap.py [--seeds 0 1 2]

Lubana et al. 2025, "Priors in Time" (arXiv 2511.01836). A temporal SAE (d = 16, n = 64, k = 4, 2 heads,
d_attn = 16) is trained as the temporal bench family trains it (200 steps of 8 windows of 32 tokens of the
``slow_state`` world, lr 3e-3). Its weights are then exported through the k = n twin (the only form
:func:`assay.dictionaries.saelens_format.save_saelens` accepts), and SAELens' model is given the TopK_k novel
code back (``kval_topk = k``): it is then assay's model except for the one term SAELens cannot express, the
dense ReLU context code in place of assay's TopK_k one. On 64 held-out windows it prints both FVUs, the
relative gap of the reconstructions (‖x̂_SAELens − x̂_assay‖ / ‖x̂_assay − mean‖), of the predictable codes, and
the share of tokens whose novel codes have the same support. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gap(seed: int) -> dict[str, float]:
    import sae_lens

    from assay.dictionaries.saelens_format import save_saelens
    from assay.dictionaries.temporal import TemporalConfig, TemporalSAE
    from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
    from assay.evaluate.reconstruction import reconstruction_metrics
    from assay.worlds.base import make_generator
    from assay.worlds.slow_state import SlowStateConfig, SlowStateWorld

    world = SlowStateWorld(SlowStateConfig(seed=seed))
    g = make_generator(1000 + seed)
    train = [world.sample(8, generator=g).inputs for _ in range(200)]
    x = world.sample(64, generator=make_generator(2000 + seed)).inputs
    d = world.config.d_model
    n = 4 * d
    shape = {"d_in": d, "d_sae": n, "n_heads": 2, "d_attn": 16, "seed": seed}
    trainer = SAETrainer(TemporalSAE(TemporalConfig(k=4, **shape)), SAETrainConfig(steps=200, warmup_steps=20, lr=3e-3))
    trainer.fit(iter(train))
    sae = trainer.finalize()[0]
    twin = TemporalSAE(TemporalConfig(k=n, **shape))
    twin.load_state_dict(sae.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        save_saelens(twin, Path(tmp) / "s")
        theirs = sae_lens.SAE.load_from_disk(str(Path(tmp) / "s"))
    theirs.cfg.kval_topk = 4
    with torch.no_grad():
        ours = sae.codes(x)
        recon = theirs(x)
        novel, predictable = theirs.encode_with_predictions(x)

    def fvu(y: torch.Tensor) -> float:
        return reconstruction_metrics(x.reshape(-1, d), y.reshape(-1, d)).fvu

    return {"seed": seed, "fvu_assay": fvu(ours.recon), "fvu_saelens_dense_context": fvu(recon),
            "recon_gap": float((recon - ours.recon).norm() / (ours.recon - ours.recon.mean((0, 1))).norm()),
            "predictable_gap": float((predictable - ours.predictable).norm() / ours.predictable.norm()),
            "same_novel_support": float(((novel != 0) == (ours.novel != 0)).all(-1).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rows = [gap(s) for s in ap.parse_args().seeds]
    for r in rows:
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
