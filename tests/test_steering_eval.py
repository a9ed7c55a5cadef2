"""Steering evaluation: Pres et al. scores (spec checks), intervention trade-off curves, manifold steering
on the cyclic-concepts world scored against its ground-truth behaviour manifold."""

import math

import pytest
import torch

from assay.evaluate.intervention import (
    TradeoffCurve,
    bhattacharyya,
    distinct_n,
    mean_kl,
    naturalness,
    perplexity,
    plot_tradeoffs,
    readout_auroc,
    success_rate,
    target_success,
    tradeoff_curve,
)
from assay.evaluate.steering import continuation_loglik, paired_shift, pres_scores
from assay.lenses.intervene import At
from assay.lenses.manifold import fit_concept_manifold, linear_path, manifold_path, steer_along

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_pres_spec_checks():
    g = _g(0)
    pos = -2 + torch.randn(40, generator=g).double()
    neg = -2.5 + torch.randn(40, generator=g).double()
    zero = pres_scores(pos, neg, pos, neg)
    assert zero.pos == (0.0, 0.0, 0.0) and zero.neg == (0.0, 0.0, 0.0)
    delta = 0.3
    raw = pres_scores(pos, neg, pos + delta, neg, renorm="none")
    assert raw.pos == pytest.approx((delta,) * 3) and raw.neg == pytest.approx((0.0,) * 3)
    sub = pres_scores(pos, neg, pos + delta, neg, renorm="subtract")
    assert sub.pos == pytest.approx((delta / 2,) * 3) and sub.neg == pytest.approx((delta / 2,) * 3)


def test_pres_hardest_fraction_selection():
    """Only the hardest positives (lowest baseline LL) count at q = 0.25."""
    base_pos = torch.tensor([-4.0, -3.0, -2.0, -1.0])
    base_neg = torch.tensor([-5.0, -5.0, -5.0, -5.0])
    steered_pos = base_pos + torch.tensor([1.0, 0.0, 0.0, 0.0])
    s = pres_scores(base_pos, base_neg, steered_pos, base_neg, fractions=(0.25, 1.0), renorm="none")
    assert s.pos == pytest.approx((1.0, 0.25))


def test_continuation_loglik_against_loop():
    g = _g(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    cont = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    got = continuation_loglik(logits, tokens, cont)
    for b in range(2):
        lps = [float(torch.log_softmax(logits[b, t - 1], -1)[tokens[b, t]]) for t in range(5) if cont[b, t]]
        assert float(got[b]) == pytest.approx(sum(lps) / len(lps), abs=1e-9)
    with pytest.raises(ValueError, match="first token"):
        continuation_loglik(logits, tokens, torch.ones(2, 5, dtype=torch.bool))


def test_metric_checks():
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert float(bhattacharyya(p, q)) == pytest.approx(0.346574, abs=1e-6)
    assert distinct_n([[1, 2, 1, 2, 1]], 2) == pytest.approx(2 / 4)
    logits = torch.zeros(1, 4, 10)
    assert perplexity(logits, torch.zeros(1, 4, dtype=torch.long)) == pytest.approx(10.0)
    assert success_rate(["I love Coffee", "tea"], "coffee") == 0.5
    with pytest.raises(ValueError, match="sum to 1"):
        bhattacharyya(torch.tensor([0.5, 0.6]), q[:2])


def test_readout_auroc_matches_sklearn_and_target_success_counts():
    from sklearn.metrics import roc_auc_score

    g = _g(5)
    y = torch.rand(60, generator=g) < 0.3
    codes = y.double() + torch.randn(60, generator=g, dtype=torch.float64)
    codes[:10] = 0.5  # ties count one half
    assert readout_auroc(codes, y) == pytest.approx(roc_auc_score(y.numpy(), codes.numpy()), abs=1e-12)
    assert math.isnan(readout_auroc(codes, torch.zeros(60, dtype=torch.bool)))  # one class: undefined
    with pytest.raises(ValueError, match="NaN"):
        readout_auroc(codes * float("nan"), y)
    pred, target = torch.tensor([3, 1, 3, 0, 3]), torch.tensor(3)
    assert target_success(pred, target) == pytest.approx(3 / 5)
    # eligible: rows whose answer was not the target before the edit (rows 1 and 3 already were, say)
    assert target_success(pred, target, torch.tensor([True, False, True, False, False])) == 1.0
    assert target_success(pred, torch.tensor([3, 3, 0, 0, 1]), torch.tensor([1, 1, 1, 1, 1])) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="no eligible"):
        target_success(pred, target, torch.zeros(5, dtype=torch.bool))


def test_paired_shift_matches_scipy_paired_t():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = _g(3)
    base = torch.randn(12, generator=g, dtype=torch.float64)
    steered = base + 0.4 + 0.3 * torch.randn(12, generator=g, dtype=torch.float64)
    s = paired_shift(base, steered, level=0.9)
    ci = scipy_stats.ttest_rel(steered.numpy(), base.numpy()).confidence_interval(0.9)
    assert (s.value, s.low, s.high, s.n) == pytest.approx((float((steered - base).mean()), ci.low, ci.high, 12))
    assert paired_shift(base, base) == (0.0, 0.0, 0.0, 12)  # no change: a zero-width interval at 0
    with pytest.raises(ValueError, match="at least 2"):
        paired_shift(base[:1], base[:1])
    with pytest.raises(ValueError, match="NaN"):
        paired_shift(base, base * float("nan"))


def test_mean_kl_against_torch_kl_div():
    g = _g(4)
    a, b = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    ref = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert mean_kl(a, b, mask) == pytest.approx(float(ref[mask.bool()].mean()), abs=1e-6)
    assert mean_kl(a, a) == 0.0
    with pytest.raises(ValueError, match="shape"):
        mean_kl(a, b[:1])


def test_tradeoff_curves_same_axes(tmp_path):
    curves = [tradeoff_curve(name, [0.0, 1.0, 2.0], lambda a, k=k: (1 - math.exp(-k * a), 10 + k * a * a))
              for name, k in (("sae", 1.0), ("steering", 2.0))]
    assert curves[0].success[0] == 0.0 and curves[1].coherence == (10.0, 12.0, 18.0)
    out = plot_tradeoffs(curves, tmp_path / "tradeoff.png")
    assert out.stat().st_size > 1000
    with_ci = TradeoffCurve("ci", (0.0, 1.0), (0.0, 0.5), (0.0, 0.1), ((0.0, 0.0), (0.3, 0.7)))
    assert plot_tradeoffs([with_ci, *curves], tmp_path / "ci.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="intervals"):
        plot_tradeoffs([with_ci._replace(interval=((0.0, 0.0),))], tmp_path / "bad.png")


def test_manifold_steering_on_cyclic_world():
    """Cyclic world: activations place each weekday on a circle (ground-truth angle) in 16 dims; the
    ground-truth behaviour is a softmax readout of the concept under that angle. Steering along the fitted
    periodic manifold stays near the behaviour manifold (low E_BC) and passes the intermediate weekdays in
    order; the straight line cuts through the centre, where the behaviour is unnatural."""
    from assay.worlds.cyclic import CyclicConfig, CyclicWorld

    world = CyclicWorld(CyclicConfig(split="all"))
    batch = world.sample(400, generator=_g(2))
    z = batch.labels["concept"][:, 1]
    theta = batch.labels["angle"][:, 1]
    R = torch.linalg.qr(torch.randn(16, 16, generator=_g(3)))[0][:, :2]
    h = 4 * torch.stack([theta.cos(), theta.sin()], 1) @ R.T + 0.1 * torch.randn(400, 16, generator=_g(4))
    E = torch.stack([world.angles.cos(), world.angles.sin()], 1) @ R.T   # concept read-out directions

    def behaviour(x):
        return torch.softmax(2.0 * x @ E.T, -1).double()

    # the "model": the site "0" then a read-out head whose outputs are the ground-truth behaviour
    head = torch.nn.Linear(16, world.n, bias=False)
    with torch.no_grad():
        head.weight.copy_(2.0 * E)
    model = torch.nn.Sequential(torch.nn.Identity(), head).eval()
    prompts = torch.randn(4, 3, 16, generator=_g(5))

    def run(mdl):
        with torch.no_grad():
            return mdl(prompts).softmax(-1).double()  # [prompt, pos, concept]

    m = fit_concept_manifold(h, z, world.n, n_components=4)
    y_manifold = behaviour(m.grid.to(torch.float32) @ m.components + m.mean)
    h0, h1 = m.point(torch.tensor(m.concept_u(0))), m.point(torch.tensor(m.concept_u(3)))
    man_path = manifold_path(m, h0, h1, 50)
    # steer: patch h ← π(t) at the last position of every prompt, read the model's behaviour there
    outs = {name: steer_along(model, "0", path, run, positions=At(-1))
            for name, path in (("linear", linear_path(h0, h1, 50)), ("manifold", man_path))}
    torch.testing.assert_close(outs["manifold"][:, 2, -1], behaviour(man_path), atol=1e-6, rtol=0)
    torch.testing.assert_close(outs["linear"][:, :, :-1], run(model)[None, :, :-1].expand(50, -1, -1, -1))  # untouched
    lin, man = (sum(naturalness(outs[k][:, p, -1], y_manifold) for p in range(4)) / 4 for k in ("linear", "manifold"))
    assert man < 0.05 and lin > 5 * man
    order = behaviour(man_path).argmax(-1)
    assert order[0] == 0 and order[-1] == 3
    assert torch.unique_consecutive(order).tolist() == [0, 1, 2, 3]  # passes Tuesday, Wednesday in order
    # s⁻¹ recovers each concept's parameter from its centroid
    for c in range(world.n):
        assert float(m.inverse(m.point(torch.tensor(m.concept_u(c))))) == pytest.approx(m.concept_u(c), abs=1e-3)


@pytest.mark.parametrize("positions", [None, At(-1), At(0, 2)])
def test_steer_along_equals_direct_intervene_bitwise(llama, positions):
    """steer_along() is a wrapper: its outputs are bitwise those of intervene(site, None, Set(value=π(t)))
    point by point, and the site's activation at the selected positions is π(t) itself."""
    from assay.hooks import capture
    from assay.lens import Set
    from assay.lenses.intervene import intervene

    site = "model.layers.0"
    ids = torch.randint(4, 64, (2, 4), generator=_g(30))
    path = torch.randn(3, 32, generator=_g(31)) * 2

    def run(mdl):
        with torch.no_grad():
            return mdl(ids).logits

    outs = steer_along(llama, site, path, run, positions=positions)
    for point, out in zip(path, outs, strict=True):
        with intervene(llama, site, None, Set(value=point), positions=positions), capture(llama, site) as c:
            assert torch.equal(out, run(llama))
        cols = [0, 1, 2, 3] if positions is None else [p % 4 for p in positions.positions]
        assert torch.equal(c[site][:, cols], point.expand(2, len(cols), 32))
    assert not torch.equal(outs[0], outs[1])


def test_every_lens_on_the_same_tradeoff_axes(tmp_path):
    """Superposition world, feature i: a CAA direction, a probe direction, an SAE whose atom 0 is the
    planted atom, and a logit lens / tuned lens whose "unembedding" is the planted atoms are swept over strength through intervene(); success = the ground-truth read-out d_i·h
    moves, coherence cost = mean |change| of the other features' read-outs. Success grows with strength
    for every lens and nothing moves at strength 0."""
    from assay.dictionaries.registry import build_sae
    from assay.hooks import capture
    from assay.lens import Add
    from assay.lenses.direction import DirectionLens
    from assay.lenses.intervene import intervene
    from assay.lenses.logit_lens import UnembedLens
    from assay.lenses.probes import diff_of_means
    from assay.lenses.steering import caa
    from assay.lenses.tuned_lens import TunedLens, TunedLensConfig
    from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

    world = SuperpositionWorld(SuperpositionConfig(n_features=20, d_model=16, p_max=0.2, p_min=0.05, seed=2))
    batch = world.sample(400, generator=_g(5))
    i, D = 2, world.directions
    acts = batch.labels["acts"]
    on, off = acts.clone(), acts.clone()
    on[:, i], off[:, i] = 1.0, 0.0
    sae = build_sae("relu", d_in=16, d_sae=24)
    with torch.no_grad():
        sae.W_dec[0] = D[i]
    tuned = TunedLens(TunedLensConfig(d_model=16, sites=("0",)))
    with torch.no_grad():
        tuned.A[0] = 0.2 * torch.randn(16, 16, generator=_g(6))
    # (lens, concept index): the vocabulary lenses read the planted atoms as their "unembedding" W_U = D
    lenses = {"caa": (DirectionLens(caa(on @ D, off @ D)), 0),
              "probe": (diff_of_means(batch.inputs, batch.labels["active"][:, i].long()).lens(), 0), "sae": (sae, 0),
              "logit lens": (UnembedLens(D), i), "tuned lens": (tuned.lens(0, D), i)}
    model = torch.nn.Sequential(torch.nn.Identity())
    h = batch.inputs[:64, None, :]
    others = [j for j in range(20) if j != i]

    def run(lens, concept):
        def at(alpha):
            with torch.no_grad(), intervene(model, "0", lens, Add(concepts=concept, amount=1.0, strength=alpha)), \
                    capture(model, "0") as c:
                model(h)
            delta = (c["0"] - h)[:, 0]
            return float((delta @ D[i]).mean()), float((delta @ D[others].T).abs().mean())
        return at

    curves = [tradeoff_curve(name, [0.0, 0.5, 1.0, 2.0], run(*lc)) for name, lc in lenses.items()]
    for c in curves:
        assert c.success[0] == 0.0 and c.coherence[0] == 0.0
        assert list(c.success) == sorted(c.success) and c.success[-1] > 1.0, c
    assert plot_tradeoffs(curves, tmp_path / "all.png").exists()
