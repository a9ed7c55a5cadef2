"""Top-activating examples and feature-browser data, against a brute-force argsort over every row of a
tiny activation store (the store of tests/test_sae_store.py: BOS at position −1 of every window)."""

import pytest
import torch
from test_sae_store import N_WIN, D, T, _store

from assay.dictionaries.features import Example, latent_browser_data, store_browser_data, top_examples
from assay.dictionaries.registry import build_sae
from assay.store import ActivationStore

pytestmark = pytest.mark.usefixtures("one_thread")
SITE = "blocks.0"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s"
    _store(path)
    with ActivationStore.open(path) as s:
        yield s


@pytest.fixture(scope="module")
def sae():
    return build_sae("topk", d_in=D, d_sae=24, k=6, seed=3)


def _codes(sae, store, latent):
    with torch.no_grad():
        return sae.encode(store.read(SITE, 0, store.n_rows))[:, latent]


def _context(store, z, row, *, exclude_special, radius):
    """The context of store row ``row``, sliced out of the token column by hand."""
    bos = store.positions.all() < 0
    w, t = divmod(row, T)
    a, b = w * T + max(0, t - radius), w * T + min(T, t + 3)
    shown = z[a:b].masked_fill(bos[a:b], 0.0) if exclude_special else z[a:b]
    return [f"<{int(i)}>" for i in store.tokens[a:b]], shown.tolist(), row - a


def _check(got, store, z, k, *, exclude_special, radius=8):
    """``got`` is a top-k of z by a brute-force argsort: the same values in the same order (the tiny model's
    activations depend on the token, so rows tie and any of the tied rows is right), each row's own
    value, no BOS row when they are left out, and each context as sliced by hand."""
    bos = store.positions.all() < 0
    ranked = z.masked_fill(bos, float("-inf")) if exclude_special else z
    order = torch.argsort(ranked, descending=True)
    want = [float(ranked[r]) for r in order if ranked[r] > 0][:k]
    assert [e.value for e in got] == pytest.approx(want, abs=1e-4)  # the browser rounds to 4 places
    assert len({e.row for e in got}) == len(got)
    for e in got:
        assert e.value == pytest.approx(float(z[e.row]), abs=1e-4)
        assert not (exclude_special and bos[e.row])
        toks, acts, focus = _context(store, z, e.row, exclude_special=exclude_special, radius=radius)
        assert list(e.tokens) == toks and e.focus == focus
        assert list(e.acts) == pytest.approx(acts, abs=1e-4)


@pytest.mark.parametrize("exclude_special", [True, False])
def test_top_examples_on_a_store_match_brute_force(sae, store, exclude_special):
    name = lambda i: f"<{i}>"  # noqa: E731
    for latent in range(sae.d_sae):
        got = top_examples(sae, store, latent, k=5, site=SITE, token_str=name, exclude_special=exclude_special,
                           chunk=100)  # chunks that cut windows: the running top-k must merge across them
        _check(got, store, _codes(sae, store, latent), 5, exclude_special=exclude_special)


def test_top_examples_on_tensors_match_the_store(sae, store):
    """[n, T, d] activations with their tokens give the store's answer (no positions: every row counts);
    [N, d] activations give the same rows without contexts."""
    acts = store.read(SITE, 0, store.n_rows).reshape(N_WIN, T, D)
    tokens = store.tokens.all().reshape(N_WIN, T)
    for latent in (0, 7):
        ref = top_examples(sae, store, latent, k=4, site=SITE, exclude_special=False)
        assert top_examples(sae, acts, latent, k=4, tokens=tokens) == ref
        flat = top_examples(sae, acts.reshape(-1, D), latent, k=4)
        assert [(e.row, e.value) for e in flat] == [(e.row, e.value) for e in ref]
        assert all(e.tokens == () for e in flat)


@torch.no_grad()
def test_top_examples_of_a_rare_latent_and_bad_input(sae, store):
    z = sae.encode(store.read(SITE, 0, store.n_rows))
    latent = int((z > 0).sum(0).argmin())
    n_fire = int((z[:, latent] > 0).sum())
    got = top_examples(sae, store, latent, k=n_fire + 10, site=SITE, exclude_special=False)
    assert len(got) == n_fire  # never a row where the latent is 0
    with pytest.raises(ValueError, match="needs site="):
        top_examples(sae, store, 0)
    with pytest.raises(ValueError, match="tokens must be"):
        top_examples(sae, torch.zeros(3, T, D), 0, tokens=torch.zeros(3, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be positive"):
        top_examples(sae, store, 0, k=0, site=SITE)


def test_store_browser_data_agrees_with_top_examples_and_counts(sae, store):
    name = lambda i: f"<{i}>"  # noqa: E731
    fd = store_browser_data(sae, store, SITE, max_rows=store.n_rows, token_str=name, top_n=4, radius=5)
    assert fd["n_latents"] == sae.d_sae and len(fd["latents"]) == sae.d_sae
    text = (store.positions.all() >= 0).nonzero().squeeze(1)  # the rows the browser sees, in order
    for lat in fd["latents"]:
        z = _codes(sae, store, lat["id"])
        assert lat["freq"] == pytest.approx(float((z[text] > 0).double().mean()), abs=1e-5)
        assert lat["max"] == pytest.approx(float(z[text].max()), abs=1e-4)
        assert sum(lat["hist"]) == int((z[text] > 0).sum())
        examples = [Example(int(text[c["row"]]), c["acts"][c["focus"]], tuple(c["tokens"]), tuple(c["acts"]),
                            c["focus"]) for c in lat["contexts"]]
        _check(examples, store, z, 4, exclude_special=True, radius=5)
    # logit effects: the top tokens of W_U · D_i, against a direct computation
    unembed = torch.randn(11, D, generator=torch.Generator().manual_seed(0))
    fd = store_browser_data(sae, store, SITE, start=(N_WIN - 4) * T, unembed=unembed, top_n=2)
    eff = sae.W_dec.detach() @ unembed.t()
    for lat in fd["latents"][:5]:
        assert [int(t) for t, _ in lat["logits"]] == eff[lat["id"]].topk(6).indices.tolist()
    with pytest.raises(ValueError, match="not whole windows"):
        store_browser_data(sae, store, SITE, start=5)


def test_latent_browser_data_without_tokens_names_rows():
    g = torch.Generator().manual_seed(1)
    sae = build_sae("topk", d_in=D, d_sae=8, k=2, seed=0)
    x = torch.randn(50, D, generator=g)
    fd = latent_browser_data(sae, x, top_n=3)
    with torch.no_grad():
        z = sae.encode(x)
    for lat in fd["latents"]:
        col = z[:, lat["id"]]
        want = [int(j) for j in torch.argsort(col, descending=True)[:3] if col[j] > 0]
        assert [c["row"] for c in lat["contexts"]] == want
        assert [c["tokens"] for c in lat["contexts"]] == [[f"#{j}"] for j in want]


def test_bos_rows_are_left_out_only_when_asked(sae, store):
    """A latent that fires on the BOS: every firing row asked for, BOS rows come back only with
    exclude_special=False, and the contexts show 0 at the BOS when it is left out."""
    bos = store.positions.all() < 0
    latent = next(i for i in range(sae.d_sae) if bool((_codes(sae, store, i)[bos] > 0).all()))
    z = _codes(sae, store, latent)
    for exclude in (True, False):
        got = top_examples(sae, store, latent, k=store.n_rows, site=SITE, token_str=lambda i: f"<{i}>",
                           exclude_special=exclude)
        assert len(got) == int((z > 0).sum()) - (int(bos.sum()) if exclude else 0)
        _check(got, store, z, store.n_rows, exclude_special=exclude)
