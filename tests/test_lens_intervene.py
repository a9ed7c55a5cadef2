"""intervene(): edits through a lens, exact at strength 0, position-correct under KV-cached generation."""

import pytest
import torch

from assay.hooks import SiteError, capture, patch
from assay.lenses.intervene import (
    Ablate,
    Add,
    AllPositions,
    At,
    Clamp,
    From,
    Generated,
    LastPrompt,
    Read,
    Scale,
    intervene,
)

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
    edit = Add(concepts=[0, 2], amount=25.0, positions=positions)
    ids = _ids()
    mask = torch.ones_like(ids)
    base_seq, base_logits = _generate(llama, ids, mask, use_cache=True)
    with intervene(llama, SITE, lens, edit):
        seq_c, logits_c = _generate(llama, ids, mask, use_cache=True)
    with intervene(llama, SITE, lens, edit):
        seq_f, logits_f = _generate(llama, ids, mask, use_cache=False)
    assert torch.equal(seq_c, seq_f)
    torch.testing.assert_close(logits_c, logits_f, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits_c, base_logits, atol=1e-3)  # the edit does something


@pytest.mark.parametrize("positions", [At(-1), LastPrompt(), Generated()])
def test_generation_left_padded_batch_cache_matches_recompute_and_rows_alone(llama, positions):
    """Left-padded batch: cached and recomputed generation agree, and the padded row steers exactly as it
    does when generated alone (its padding shifts no position the selector names)."""
    lens = LinearLens(32, 4)
    edit = Add(concepts=[1, 3], amount=25.0, positions=positions)
    ids = _ids(B=2, T=6, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    outs = []
    for use_cache in (True, False):
        with intervene(llama, SITE, lens, edit):
            outs.append(_generate(llama, ids, mask, use_cache=use_cache))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
    with intervene(llama, SITE, lens, edit):
        alone_seq, alone_logits = _generate(llama, ids[:1, 2:], mask[:1, 2:], use_cache=True)
    assert torch.equal(alone_seq[0], outs[0][0][0, 2:])
    torch.testing.assert_close(alone_logits[0], outs[0][1][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("edit", [Add(concepts=0, amount=5.0, strength=0.0), Clamp(value=1.0, strength=0.0)])
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
    with intervene(llama, SITE, lens, Add(concepts=1, amount=30.0, positions=At(-1))):
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
    edit = Add(concepts=0, amount=10.0, positions=AllPositions())
    with torch.no_grad(), capture(llama, SITE) as cap:
        llama(ids, attention_mask=mask)
    base = cap[SITE]
    with torch.no_grad(), intervene(llama, "model.embed_tokens", lens, edit), capture(llama, "model.embed_tokens") as c2:
        llama(ids, attention_mask=mask)
    emb = c2["model.embed_tokens"]
    raw = llama.model.embed_tokens(ids)
    assert torch.equal(emb[0, :2], raw[0, :2])  # padding never edited
    assert not torch.allclose(emb[0, 2:], raw[0, 2:])
    # LastPrompt with right padding picks column mask.sum-1 per row
    rmask = torch.ones_like(ids)
    rmask[1, 3:] = 0
    with torch.no_grad(), intervene(llama, "model.embed_tokens", lens, Read(positions=LastPrompt())) as iv:
        llama(ids, attention_mask=rmask)
    sel = iv.readings[0].selected
    assert sel[0].nonzero().flatten().tolist() == [4] and sel[1].nonzero().flatten().tolist() == [2]
    assert base.shape == (2, 5, 32)


@pytest.mark.parametrize("edit_cls", [Clamp, Add, Scale, Ablate])
def test_strength_zero_is_bitwise_identity(llama, edit_cls):
    lens = LinearLens(32, 4)
    kw = {"Clamp": {"value": 3.0}, "Add": {"amount": 3.0}, "Scale": {"factor": 4.0}, "Ablate": {}}[edit_cls.__name__]
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
    with torch.no_grad(), intervene(model, "0", lens, Ablate(concepts=2, positions=At(1))), capture(model, "0") as c:
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
        with intervene(llama, SITE, sae, Clamp(concepts=latent, value=40.0, positions=At(-1))) as iv, \
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
    with pytest.raises(ValueError, match="non-finite"), intervene(model, "0", lens, Add(amount=1.0)):
        model(h)
    with pytest.raises(ValueError, match="out of range"), intervene(model, "0", lens, Add(concepts=5, amount=1.0)):
        model(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"\[batch, pos, d\]"), intervene(model, "0", lens, Add(amount=1.0)):
        model(torch.randn(2, 6))
