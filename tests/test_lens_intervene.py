"""intervene(): edits through a lens, exact at strength 0, position-correct under KV-cached generation."""

import pytest
import torch

from assay.hooks import SiteError, capture, patch
from assay.lens import Ablate, Add, Clamp, Read, Scale, Set
from assay.lenses.intervene import AllPositions, At, From, Generated, LastPrompt, intervene

pytestmark = pytest.mark.usefixtures("one_thread")


class LinearLens:
    """encode = h W (d → n), decode = z W⁺ (a lossy lens when n < d)."""

    def __init__(self, d, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        self.W = q[:, :n] * 2.0
        self.P = torch.linalg.pinv(self.W)

    def encode(self, h):
        return h @ self.W

    def decode(self, z):
        return z @ self.P


def _ids(B=2, T=5, seed=1):
    return torch.randint(4, 64, (B, T), generator=torch.Generator().manual_seed(seed))


def _generate(model, ids, mask, *, use_cache, n=4):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1)


SITE = "model.layers.0"


@pytest.mark.parametrize("positions", [At(-1), LastPrompt(), Generated(), From(-2)])
def test_generation_cache_matches_full_recompute(llama, positions):
    lens = LinearLens(32, 4)
    edit = Add(concepts=[0, 2], amount=25.0)
    ids = _ids()
    mask = torch.ones_like(ids)
    base_seq, base_logits = _generate(llama, ids, mask, use_cache=True)
    with intervene(llama, SITE, lens, edit, positions=positions):
        seq_c, logits_c = _generate(llama, ids, mask, use_cache=True)
    with intervene(llama, SITE, lens, edit, positions=positions):
        seq_f, logits_f = _generate(llama, ids, mask, use_cache=False)
    assert torch.equal(seq_c, seq_f)
    torch.testing.assert_close(logits_c, logits_f, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits_c, base_logits, atol=1e-3)  # the edit does something


@pytest.mark.parametrize("positions", [At(-1), LastPrompt(), Generated()])
def test_generation_left_padded_batch_cache_matches_recompute_and_rows_alone(llama, positions):
    """Left-padded batch: cached and recomputed generation agree, and the padded row steers exactly as it
    does when generated alone (its padding shifts no position the selector names)."""
    lens = LinearLens(32, 4)
    edit = Add(concepts=[1, 3], amount=25.0)
    ids = _ids(B=2, T=6, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    outs = []
    for use_cache in (True, False):
        with intervene(llama, SITE, lens, edit, positions=positions):
            outs.append(_generate(llama, ids, mask, use_cache=use_cache))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
    with intervene(llama, SITE, lens, edit, positions=positions):
        alone_seq, alone_logits = _generate(llama, ids[:1, 2:], mask[:1, 2:], use_cache=True)
    assert torch.equal(alone_seq[0], outs[0][0][0, 2:])
    torch.testing.assert_close(alone_logits[0], outs[0][1][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("edit", [Add(concepts=0, amount=5.0, strength=0.0), Clamp(value=1.0, strength=0.0),
                                  Set(value=1.0, strength=0.0)])
def test_strength_zero_generation_is_bitwise_identity(llama, edit):
    lens = LinearLens(32, 4)
    ids = _ids()
    mask = torch.ones_like(ids)
    base_seq, base_logits = _generate(llama, ids, mask, use_cache=True)
    with intervene(llama, SITE, lens, edit):
        seq, logits = _generate(llama, ids, mask, use_cache=True)
    assert torch.equal(seq, base_seq) and torch.equal(logits, base_logits)


def test_generation_edit_equals_manual_patch_of_final_sequence(llama):
    """The logits of the cached, edited generation equal one forward pass over the final sequence with
    the edit applied by hand at absolute column 4 (the last prompt token)."""
    lens = LinearLens(32, 4)
    ids = _ids(B=1, T=5)
    with intervene(llama, SITE, lens, Add(concepts=1, amount=30.0), positions=At(-1)):
        seq, logits = _generate(llama, ids, torch.ones_like(ids), use_cache=True, n=4)
    delta = lens.decode(torch.tensor([0.0, 30.0, 0.0, 0.0]))

    def fn(h):
        h = h.clone()
        h[:, 4] += delta
        return h

    with torch.no_grad(), patch(llama, {SITE: fn}):
        full = llama(seq).logits
    torch.testing.assert_close(logits[0], full[0, 4:-1], atol=1e-4, rtol=1e-4)


def test_left_padding_last_prompt_and_padding_untouched(llama):
    lens = LinearLens(32, 4)
    ids = _ids(B=2, T=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding on row 0
    edit = Add(concepts=0, amount=10.0)
    with torch.no_grad(), capture(llama, SITE) as cap:
        llama(ids, attention_mask=mask)
    base = cap[SITE]
    with torch.no_grad(), intervene(llama, "model.embed_tokens", lens, edit, positions=AllPositions()), capture(llama, "model.embed_tokens") as c2:
        llama(ids, attention_mask=mask)
    emb = c2["model.embed_tokens"]
    raw = llama.model.embed_tokens(ids)
    assert torch.equal(emb[0, :2], raw[0, :2])  # padding never edited
    assert not torch.allclose(emb[0, 2:], raw[0, 2:])
    # LastPrompt with right padding picks column mask.sum-1 per row
    rmask = torch.ones_like(ids)
    rmask[1, 3:] = 0
    with torch.no_grad(), intervene(llama, "model.embed_tokens", lens, Read(), positions=LastPrompt()) as iv:
        llama(ids, attention_mask=rmask)
    sel = iv.readings[0].selected
    assert sel[0].nonzero().flatten().tolist() == [4] and sel[1].nonzero().flatten().tolist() == [2]
    assert base.shape == (2, 5, 32)


@pytest.mark.parametrize("edit_cls", [Set, Clamp, Add, Scale, Ablate])
def test_strength_zero_is_bitwise_identity(llama, edit_cls):
    lens = LinearLens(32, 4)
    kw = {"Set": {"value": 3.0}, "Clamp": {"value": 3.0}, "Add": {"amount": 3.0}, "Scale": {"factor": 4.0},
          "Ablate": {}}[edit_cls.__name__]
    ids = _ids()
    with torch.no_grad():
        base = llama(ids).logits
        with intervene(llama, SITE, lens, edit_cls(concepts=1, strength=0.0, **kw)):
            out = llama(ids).logits
    assert torch.equal(base, out)


def test_identity_edit_keeps_reconstruction_error(llama):
    """A lossy lens (4 concepts for 32 dims) with an identity edit (Scale factor 1) changes nothing,
    because h′ = h + D(z′) − D(z) keeps the reconstruction error."""
    lens = LinearLens(32, 4)
    ids = _ids()
    with torch.no_grad():
        base = llama(ids).logits
        with intervene(llama, SITE, lens, Scale(factor=1.0)):
            out = llama(ids).logits
    torch.testing.assert_close(out, base, atol=0, rtol=0)


def test_clamp_sets_code_and_ablate_zeroes_it():
    """On an invertible lens the edited activation's code equals the requested value."""
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
    lens = LinearLens(6, 6, seed=3)
    h = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), intervene(model, "0", lens, Clamp(concepts=[1, 4], value=2.5)), capture(model, "0") as c:
        model(h)
    z = lens.encode(c["0"])
    torch.testing.assert_close(z[..., [1, 4]], torch.full((2, 3, 2), 2.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[..., [0, 2, 3, 5]], lens.encode(h)[..., [0, 2, 3, 5]], atol=1e-4, rtol=0)
    with torch.no_grad(), intervene(model, "0", lens, Ablate(concepts=2), positions=At(1)), capture(model, "0") as c:
        model(h)
    z = lens.encode(c["0"])
    torch.testing.assert_close(z[:, 1, 2], torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(c["0"][:, [0, 2]], h[:, [0, 2]], atol=0, rtol=0)


def test_sae_plugs_in_unchanged(llama):
    from assay.dictionaries.registry import build_sae

    sae = build_sae("topk", d_in=32, d_sae=64, k=8)
    ids = _ids()
    with torch.no_grad(), capture(llama, SITE) as cap:
        base = llama(ids).logits
    h = cap[SITE]
    latent = int(sae.encode(h)[0, -1].argmax())
    with torch.no_grad():
        with intervene(llama, SITE, sae, Clamp(concepts=latent, value=40.0), positions=At(-1)) as iv, \
                capture(llama, SITE) as c2:
            out = llama(ids).logits
    # reference: h + decode(z') − decode(z) at the last column, computed by hand
    z = sae.encode(h[:, -1])
    z2 = z.clone()
    z2[:, latent] = 40.0
    expect = h.clone()
    expect[:, -1] = h[:, -1] + sae.decode(z2) - sae.decode(z)
    torch.testing.assert_close(c2[SITE], expect, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, -1], base[:, -1])
    torch.testing.assert_close(out[:, :-1], base[:, :-1], atol=1e-6, rtol=0)  # causal: earlier columns unchanged
    assert iv.readings[0].z.shape == (2, 64)


def test_bad_input():
    model = torch.nn.Sequential(torch.nn.Identity())
    lens = LinearLens(6, 3)
    with pytest.raises(SiteError, match="no submodule"):
        with intervene(model, "nope", lens, Read()):
            pass
    with pytest.raises(TypeError, match="not a Lens"):
        with intervene(model, "0", object(), Read()):
            pass
    h = torch.randn(1, 2, 6)
    h[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite activations .* site '0'"), \
            intervene(model, "0", lens, Add(amount=1.0), check_finite=True):
        model(h)
    with torch.no_grad(), intervene(model, "0", lens, Add(amount=1.0)):  # default: no check, the NaN propagates
        assert model(h)[0, 0].isnan().any()
    with pytest.raises(ValueError, match="out of range"), intervene(model, "0", lens, Add(concepts=5, amount=1.0)):
        model(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"\[batch, pos, d\]"), intervene(model, "0", lens, Add(amount=1.0)):
        model(torch.randn(2, 6))


def test_set_replaces_the_code_scaled_by_strength():
    """Set: z′_c = s·value on an invertible lens (Clamp moves toward the value instead); without a lens
    Set(value=p) at strength 1 puts p itself in the selected rows, bitwise."""
    model = torch.nn.Sequential(torch.nn.Identity())
    lens = LinearLens(6, 6, seed=4)
    h = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    z = lens.encode(h)
    for edit, want in [(Set(concepts=[0, 5], value=torch.tensor([2.0, -1.0]), strength=0.5), torch.tensor([1.0, -0.5])),
                       (Clamp(concepts=[0, 5], value=torch.tensor([2.0, -1.0]), strength=0.5),
                        z[..., [0, 5]] + 0.5 * (torch.tensor([2.0, -1.0]) - z[..., [0, 5]]))]:
        with torch.no_grad(), intervene(model, "0", lens, edit), capture(model, "0") as c:
            model(h)
        got = lens.encode(c["0"])
        torch.testing.assert_close(got[..., [0, 5]], want.expand(2, 3, 2), atol=1e-4, rtol=0)
        torch.testing.assert_close(got[..., 1:5], z[..., 1:5], atol=1e-4, rtol=0)
    p = torch.randn(6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), intervene(model, "0", None, Set(value=p), positions=At(1)), capture(model, "0") as c:
        model(h)
    assert torch.equal(c["0"][:, 1], p.expand(2, 6)) and torch.equal(c["0"][:, [0, 2]], h[:, [0, 2]])


def test_without_lens_edits_the_activations_exactly():
    model = torch.nn.Sequential(torch.nn.Identity())
    h = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    v = torch.randn(6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), intervene(model, "0", None, Add(amount=v, strength=1.5)), capture(model, "0") as c:
        model(h)
    assert torch.equal(c["0"], h + 1.5 * v)
    with torch.no_grad(), intervene(model, "0", None, Ablate(concepts=[1, 2])), capture(model, "0") as c:
        model(h)
    assert torch.equal(c["0"][..., [1, 2]], torch.zeros(2, 4, 2)) and torch.equal(c["0"][..., [0, 3, 4, 5]], h[..., [0, 3, 4, 5]])


def test_several_sites_equal_nested_single_site_calls(llama):
    """One call over {site: (lens, edit)} is bitwise the nested single-site calls; readings name their site."""
    lens, other = LinearLens(32, 4), LinearLens(32, 3, seed=7)
    ids = _ids()
    plan = {SITE: (lens, Add(concepts=[0, 2], amount=9.0)), "model.layers.1": (other, Clamp(concepts=1, value=-4.0))}
    with torch.no_grad():
        with intervene(llama, plan, positions=From(2)) as iv:
            both = llama(ids).logits
        with intervene(llama, SITE, *plan[SITE], positions=From(2)), \
                intervene(llama, "model.layers.1", *plan["model.layers.1"], positions=From(2)):
            nested = llama(ids).logits
        base = llama(ids).logits
    assert torch.equal(both, nested) and not torch.allclose(both, base, atol=1e-3)
    assert [r.site for r in iv.readings] == [SITE, "model.layers.1"]
    assert iv.readings[0].z.shape == (2 * 3, 4) and iv.readings[1].z.shape == (2 * 3, 3)


def test_schedule_multiplies_strength_per_step_and_normalize_keeps_norms():
    """With the prompt length 2, the columns of a 5-token call are steps -2..2; linear_decay(2) gives the
    multipliers 1, 1, 1, 0.5, 0: h′ = h + 3·m_t·v by hand. normalize rescales each edited row to its norm."""
    from assay.lenses.intervene import linear_decay

    model = torch.nn.Sequential(torch.nn.Identity())
    h = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5))
    v = torch.randn(6, generator=torch.Generator().manual_seed(6))
    m = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0])
    with torch.no_grad(), intervene(model, "0", None, Add(amount=v, strength=3.0), schedule=linear_decay(2),
                                    prompt_len=2), capture(model, "0") as c:
        model(h)
    torch.testing.assert_close(c["0"], h + 3.0 * m[:, None] * v, atol=0, rtol=0)
    with torch.no_grad(), intervene(model, "0", None, Add(amount=v, strength=3.0), positions=At(1, 3),
                                    normalize=True), capture(model, "0") as c:
        model(h)
    torch.testing.assert_close(c["0"].norm(dim=-1), h.norm(dim=-1))
    assert torch.equal(c["0"][:, [0, 2, 4]], h[:, [0, 2, 4]]) and not torch.allclose(c["0"][:, 1], h[:, 1])
    with torch.no_grad(), intervene(model, "0", LinearLens(6, 3), Add(amount=1.0), record=False) as iv:
        model(h)
    assert iv.readings == []


def test_bad_call_forms():
    model = torch.nn.Sequential(torch.nn.Identity())
    lens = LinearLens(6, 3)
    with pytest.raises(TypeError, match="needs an edit"), intervene(model, "0", lens):
        pass
    with pytest.raises(TypeError, match="not a mapping together"), intervene(model, {"0": (lens, Read())}, lens):
        pass
    with pytest.raises(TypeError, match="is not an edit"), intervene(model, {"0": (lens, "add")}):
        pass
    with pytest.raises(TypeError, match=r"\(lens, edit\) pair"), intervene(model, {"0": Read()}):
        pass
    with pytest.raises(ValueError, match="finite number"):
        Add(amount=1.0, strength=float("nan"))
    with pytest.raises(ValueError, match="width 5.*touches 6"), intervene(model, "0", None, Add(amount=torch.ones(5))):
        model(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match="one multiplier per position"), \
            intervene(model, "0", None, Add(amount=1.0), schedule=lambda t: torch.ones(3)):
        model(torch.randn(1, 2, 6))
