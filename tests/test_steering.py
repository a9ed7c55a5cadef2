"""Steering: extraction and operators vs steering-vectors and scikit-learn, contracts, generation positions."""

import pytest
import torch
from peer_import import peer

from assay.hooks import capture
from assay.lens import Ablate, Add, Clamp, Set
from assay.lenses.direction import DirectionLens
from assay.lenses.intervene import At, From, Generated, LastPrompt, intervene, linear_decay
from assay.lenses.probes import diff_of_means, logistic
from assay.lenses.steering import caa, contrast_direction, pca_direction, probe_direction, rescale, steer

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = "model.layers.0"


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _pairs(n=30, d=12, seed=1):
    g = _g(seed)
    u = torch.randn(d, generator=g)
    neg = torch.randn(n, d, generator=g)
    pos = neg + u * (1 + 0.3 * torch.randn(n, 1, generator=g)) + 0.2 * torch.randn(n, d, generator=g)
    return pos, neg, u


def test_extraction_parity_with_steering_vectors():
    sv = peer("steering_vectors")
    pos, neg, _ = _pairs()
    torch.testing.assert_close(caa(pos, neg), sv.mean_aggregator()(pos, neg))
    torch.testing.assert_close(pca_direction(pos, neg, variant="uncentred"), sv.pca_aggregator()(pos, neg),
                               atol=1e-5, rtol=1e-5)


def test_pca_diff_matches_sklearn_with_sign_fix():
    from sklearn.decomposition import PCA

    pos, neg, u = _pairs(seed=2)
    v = pca_direction(pos, neg, variant="diff")
    ref = torch.from_numpy(PCA(n_components=1).fit((pos - neg).double().numpy()).components_[0]).float()
    assert abs(float(v @ ref)) == pytest.approx(1.0, abs=1e-5)
    assert float(((pos - neg) @ v).mean()) > 0  # sign fix
    assert float(pca_direction(neg, pos, variant="diff") @ v) == pytest.approx(-1.0, abs=1e-5)
    vc = pca_direction(pos, neg, variant="center")
    assert float(vc @ (u / u.norm())) > 0.9


@pytest.mark.parametrize(("ours", "theirs"), [("add", "addition_operator"), ("ablate", "ablation_operator"),
                                              ("ablate_then_add", "ablation_then_addition_operator")])
def test_application_parity_with_steering_vectors(llama, ours, theirs):
    sv = peer("steering_vectors")
    v = torch.randn(32, generator=_g(3)) * 2
    ids = torch.randint(4, 64, (2, 6), generator=_g(4))
    vector = sv.SteeringVector(layer_activations={0: v}, layer_type="decoder_block")
    with torch.no_grad():
        with vector.apply(llama, multiplier=1.5, operator=getattr(sv, theirs)()):
            ref = llama(ids).logits
        with steer(llama, {SITE: v}, operator=ours, strength=1.5):
            out = llama(ids).logits
        base = llama(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, base, atol=1e-3)


def _naive(h, v, operator, alpha):
    """The three operators written out on h (the reference)."""
    v_hat = v / v.norm()
    ablated = h - (h @ v_hat)[..., None] * v_hat
    return {"add": h + alpha * v, "ablate": ablated, "ablate_then_add": ablated + alpha * v}[operator]


def test_direction_lens_edits_equal_operators():
    """intervene() with a DirectionLens reproduces the three operators (the encoder–decoder view), and
    so does steer() on an identity model."""
    model = torch.nn.Sequential(torch.nn.Identity())
    v = torch.randn(8, generator=_g(5))
    h = torch.randn(2, 3, 8, generator=_g(6))
    lens = DirectionLens(v)
    cases = [(Add(amount=2.0 * float(v.norm())), _naive(h, v, "add", 2.0)),
             (Ablate(), _naive(h, v, "ablate", 2.0)),
             (Clamp(value=2.0 * float(v.norm())), _naive(h, v, "ablate_then_add", 2.0)),
             (Set(value=float(v.norm()), strength=2.0), _naive(h, v, "ablate_then_add", 2.0))]
    for edit, expect in cases:
        with torch.no_grad(), intervene(model, "0", lens, edit), capture(model, "0") as c:
            model(h)
        torch.testing.assert_close(c["0"], expect, atol=1e-5, rtol=1e-5)
    for op in ("add", "ablate", "ablate_then_add"):
        with torch.no_grad(), steer(model, {"0": v}, operator=op, strength=2.0), capture(model, "0") as c:
            model(h)
        torch.testing.assert_close(c["0"], _naive(h, v, op, 2.0), atol=1e-5, rtol=1e-5)


def test_contracts(llama):
    v = torch.randn(32, generator=_g(7))
    ids = torch.randint(4, 64, (2, 6), generator=_g(8))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        base = llama(ids, attention_mask=mask).logits
        for op in ("add", "ablate_then_add"):
            with steer(llama, {SITE: v}, operator=op, strength=0.0):
                assert torch.equal(llama(ids, attention_mask=mask).logits, base)  # bitwise
        with steer(llama, {SITE: v}, strength=3.0), steer(llama, {SITE: -v}, strength=3.0):
            torch.testing.assert_close(llama(ids, attention_mask=mask).logits, base, atol=1e-5, rtol=1e-5)
        with steer(llama, {"model.embed_tokens": v}, strength=3.0), capture(llama, "model.embed_tokens") as c:
            llama(ids, attention_mask=mask)
    raw = llama.model.embed_tokens(ids)
    assert torch.equal(c["model.embed_tokens"][0, :2], raw[0, :2])  # padding untouched
    ident = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
    h = torch.randn(4, 1, 32, generator=_g(9))
    with torch.no_grad(), steer(ident, {"0": v, "1": v}, operator="ablate", strength=0.0), \
            capture(ident, ["0", "1"]) as c:
        ident(h)  # ablate ignores the strength; ablating twice is ablating once
    torch.testing.assert_close(c["1"], c["0"], atol=1e-6, rtol=0)
    torch.testing.assert_close(c["0"] @ (v / v.norm()), torch.zeros(4, 1), atol=1e-5, rtol=0)
    with torch.no_grad(), steer(ident, {"0": v}, strength=5.0, normalize=True), capture(ident, "0") as c:
        ident(h)
    torch.testing.assert_close(c["0"].norm(dim=-1), h.norm(dim=-1))
    assert not torch.allclose(c["0"], h, atol=1e-3)


def test_generation_schedule_and_positions_cache_vs_recompute(llama):
    v = torch.randn(32, generator=_g(10)) * 4
    ids = torch.randint(4, 64, (2, 5), generator=_g(11))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=0,
              output_logits=True, return_dict_in_generate=True)
    outs = []
    for use_cache in (True, False):
        with steer(llama, {SITE: v}, strength=2.0, schedule=linear_decay(3)):
            outs.append(torch.stack(llama.generate(ids, use_cache=use_cache, **kw).logits, 1))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    outs = []
    for use_cache in (True, False):
        with steer(llama, {SITE: v}, strength=2.0, positions=LastPrompt()):
            outs.append(torch.stack(llama.generate(ids, use_cache=use_cache, **kw).logits, 1))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    assert linear_decay(4)(torch.tensor([-2, 0, 2, 4, 6])).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]


def _gen_logits(model, ids, mask, n=4):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize(("operator", "strength", "positions", "schedule"), [
    ("add", 1.5, None, None),
    ("add", -2.0, At(-1), linear_decay(2)),
    ("ablate", 3.0, LastPrompt(), None),
    ("ablate_then_add", 0.7, From(-2), linear_decay(3)),
    ("ablate_then_add", 2.0, Generated(), None),
])
def test_steer_equals_direct_intervene_bitwise(llama, operator, strength, positions, schedule):
    """steer() is a wrapper: its output (a forward pass and a cached generation, two sites) is bitwise the
    output of the intervene() call it stands for, written out by hand."""
    g = _g(20)
    vs = {SITE: torch.randn(32, generator=g) * 3, "model.layers.1": torch.randn(32, generator=g) * 3}
    ids = torch.randint(4, 64, (2, 5), generator=_g(21))
    mask = torch.ones_like(ids)
    mask[1, :1] = 0

    def edit(v):
        return {"add": (None, Add(amount=v, strength=strength)), "ablate": (DirectionLens(v), Ablate()),
                "ablate_then_add": (DirectionLens(v), Set(value=float(v.norm()), strength=strength))}[operator]

    direct = {s: edit(v) for s, v in vs.items()}
    sched = None if operator == "ablate" else schedule  # ablate ignores strength and schedule
    kw = dict(operator=operator, strength=strength, positions=positions, schedule=schedule)
    with torch.no_grad():  # one block per forward pass or generate call (the block's first call is the prompt)
        with steer(llama, vs, **kw):
            out = llama(ids, attention_mask=mask).logits
        with steer(llama, vs, **kw):
            seq, gen = _gen_logits(llama, ids, mask)
        with intervene(llama, direct, positions=positions, schedule=sched):
            ref = llama(ids, attention_mask=mask).logits
        with intervene(llama, direct, positions=positions, schedule=sched):
            ref_seq, ref_gen = _gen_logits(llama, ids, mask)
    assert torch.equal(out, ref) and torch.equal(seq, ref_seq) and torch.equal(gen, ref_gen)
    assert not torch.equal(gen, _gen_logits(llama, ids, mask)[1])  # the steering does something


@pytest.mark.parametrize("operator", ["add", "ablate_then_add"])
def test_steer_strength_zero_is_bitwise_identity_in_cached_generation(llama, operator):
    v = torch.randn(32, generator=_g(22)) * 4
    ids = torch.randint(4, 64, (2, 5), generator=_g(23))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        base_seq, base_gen = _gen_logits(llama, ids, mask)
        with steer(llama, {SITE: v, "model.layers.1": -v}, operator=operator, strength=0.0, schedule=linear_decay(2)):
            seq, gen = _gen_logits(llama, ids, mask)
    assert torch.equal(seq, base_seq) and torch.equal(gen, base_gen)


def test_planted_concept_direction_and_behaviour():
    """Superposition world without noise: pairs that differ only in feature i give CAA ∝ its planted atom;
    the probe direction matches it too, and steering along it raises the ground-truth read-out."""
    from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

    world = SuperpositionWorld(SuperpositionConfig(n_features=20, d_model=16, p_max=0.2, p_min=0.05, seed=1))
    batch = world.sample(600, generator=_g(12))
    acts = batch.labels["acts"]
    i = 3
    on, off = acts.clone(), acts.clone()
    on[:, i] = 1.0
    off[:, i] = 0.0
    pos, neg = on @ world.directions, off @ world.directions
    d_i = world.directions[i]
    assert float(caa(pos, neg) @ d_i / caa(pos, neg).norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(pca_direction(pos, neg, variant="center") @ d_i) == pytest.approx(1.0, abs=1e-4)
    y = batch.labels["active"][:, i].long()
    probe = diff_of_means(batch.inputs, y)
    assert float(probe.direction @ d_i) > 0.9
    # steering with the probe direction moves the concept's ground-truth read-out (d_i·h)
    model = torch.nn.Sequential(torch.nn.Identity())
    h = batch.inputs[:50, None, :]
    with torch.no_grad(), steer(model, {"0": probe_direction(probe)}, strength=1.0), capture(model, "0") as c:
        model(h)
    moved = (c["0"] - h)[:, 0] @ d_i
    torch.testing.assert_close(moved, torch.full((50,), float(probe.w @ d_i)), atol=1e-5, rtol=0)
    assert float(moved[0]) > 0.4  # ≈ the mean magnitude of an active feature (uniform on [0, 1]) × cos


def test_contrast_directions_and_rescale():
    """contrast_direction names caa / pca / probe exactly (the same vectors as the functions it names); rescale
    keeps the direction and sets the norm."""
    pos, neg, u = _pairs(seed=14)
    assert torch.equal(contrast_direction("caa", pos, neg), caa(pos, neg))
    assert torch.equal(contrast_direction("pca", pos, neg, pca_variant="center"), pca_direction(pos, neg, variant="center"))
    y = torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])
    assert torch.equal(contrast_direction("probe", pos, neg, C=0.1), logistic(torch.cat([pos, neg]), y, C=0.1, standardise=True).w)
    for name in ("caa", "pca", "probe"):  # all point along the planted difference u
        v = contrast_direction(name, pos, neg)
        assert float(v @ u / (v.norm() * u.norm())) > 0.8, name
    v = contrast_direction("probe", pos, neg)
    r = rescale(v, 7.5)
    assert float(r.double().norm()) == pytest.approx(7.5, rel=1e-6) and r.dtype == v.dtype
    assert float(r @ v / (r.norm() * v.norm())) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown contrastive direction 'lda'"):
        contrast_direction("lda", pos, neg)
    with pytest.raises(ValueError, match="zero vector"):
        rescale(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="target norm"):
        rescale(v, float("nan"))


def test_bad_input(llama):
    ids = torch.randint(4, 64, (1, 4), generator=_g(13))
    with pytest.raises(ValueError, match="width 31"), steer(llama, {SITE: torch.randn(31)}):
        llama(ids)
    with pytest.raises(ValueError, match="zero vector"), steer(llama, {SITE: torch.zeros(32)}):
        pass
    with pytest.raises(ValueError, match="NaN"), steer(llama, {SITE: torch.full((32,), float("nan"))}):
        pass
    with pytest.raises(ValueError, match="equal shape"):
        caa(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        caa(torch.full((2, 4), float("nan")), torch.randn(2, 4))
    with pytest.raises(KeyError, match="no submodule"), steer(llama, {"model.layers.7": torch.randn(32)}):
        pass
    model = torch.nn.Sequential(torch.nn.Identity())
    h = torch.randn(1, 3, 4)
    h[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite activations"), steer(model, {"0": torch.ones(4)}, check_finite=True):
        model(h)
    with pytest.raises(ValueError, match="unknown steering operator"):
        steer(model, {"0": torch.ones(4)}, operator="multiply")
