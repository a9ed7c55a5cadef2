"""SAELens on-disk format: assay → SAELens and SAELens → assay give the same outputs."""

import pytest
import torch
from peer_import import peer

from assay.dictionaries.registry import build_sae
from assay.dictionaries.saelens_format import load_saelens, save_saelens

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(arch, **kw):
    sae = build_sae(arch, d_in=12, d_sae=40, seed=3, **kw)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name in ("threshold", "rel_threshold"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        if arch == "batchtopk":
            sae.threshold.fill_(0.4)
    return sae


@pytest.mark.peers
@pytest.mark.parametrize("arch,kw", [("topk", {"k": 5}), ("relu", {}), ("jumprelu", {}), ("batchtopk", {"k": 5})])
def test_assay_to_saelens_and_back(arch, kw, tmp_path):
    sae_lens = peer("sae_lens")
    sae = _randomised(arch, **kw)
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    save_saelens(sae, tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(theirs.encode(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(z), sae.decode(z), atol=1e-5, rtol=1e-5)
        # and back: SAELens writes, assay reads
        theirs.save_model(str(tmp_path / "t"))
        back = load_saelens(tmp_path / "t")
        torch.testing.assert_close(back.encode(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.decode(z), sae.decode(z), atol=1e-5, rtol=1e-5)


@pytest.mark.peers
def test_saelens_native_topk_with_b_dec_loads(tmp_path):
    sae_lens = peer("sae_lens")
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    theirs = TopKSAE(TopKSAEConfig(d_in=12, d_sae=40, k=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    theirs.save_model(str(tmp_path / "t"))
    ours = load_saelens(tmp_path / "t")
    x = torch.randn(9, 12, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-5,
                                   rtol=1e-5)
    assert sae_lens is not None


def test_bad_saelens_folders(tmp_path):
    with pytest.raises(ValueError, match="not an SAELens SAE folder"):
        load_saelens(tmp_path)
    with pytest.raises(ValueError, match="no inference format"):
        save_saelens(build_sae("spade", d_in=4, d_sae=8), tmp_path / "x")
    with pytest.raises(ValueError, match="no inference threshold"):
        save_saelens(build_sae("batchtopk", d_in=4, d_sae=8, k=2), tmp_path / "y")


@pytest.mark.peers
@pytest.mark.parametrize("skip", [False, True])
def test_jumprelu_transcoder_to_saelens_and_back(skip, tmp_path):
    sae_lens = peer("sae_lens")
    tc = build_sae("jumprelu_transcoder", d_in=12, d_out=7, d_sae=40, skip=skip, seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 if name == "rel_threshold"
                    else p + 0.3 * torch.randn(p.shape, generator=g))  # W_skip non-symmetric (7 × 12)
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    save_saelens(tc, tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    assert type(theirs).__name__ == ("JumpReLUSkipTranscoder" if skip else "JumpReLUTranscoder")
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), tc.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), tc.transcode(x), atol=1e-5, rtol=1e-5)
        theirs.save_model(str(tmp_path / "t"))
        back = load_saelens(tmp_path / "t")
        torch.testing.assert_close(back.transcode(x), tc.transcode(x), atol=1e-5, rtol=1e-5)


@pytest.mark.peers
def test_archetypal_exports_as_a_saelens_topk(tmp_path):
    sae_lens = peer("sae_lens")
    sae = build_sae("archetypal", d_in=12, d_sae=16, k=4, seed=1)
    g = torch.Generator().manual_seed(2)
    sae.init_from_batch(torch.randn(64, 12, generator=g))
    with torch.no_grad():
        sae.Lam.add_(0.1 * torch.randn(sae.Lam.shape, generator=g))
    x = torch.randn(20, 12, generator=g)
    save_saelens(sae, tmp_path / "a")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "a"))
    with torch.no_grad():
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)


def test_architectures_saelens_cannot_load_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no TopK transcoder"):
        save_saelens(build_sae("topk_transcoder", d_in=4, d_out=3, d_sae=8, k=2), tmp_path / "t")
    with pytest.raises(ValueError, match="SAELens-loadable"):
        save_saelens(build_sae("mp", d_in=4, d_sae=8, k=2), tmp_path / "m")


def _temporal(**kw):
    from assay.dictionaries.temporal import TemporalConfig, TemporalSAE

    sae = TemporalSAE(TemporalConfig(**({"d_in": 16, "d_sae": 64, "k": 64, "n_heads": 2, "d_attn": 16, "seed": 0}
                                        | kw)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (sae.b_dec, sae.b_q, sae.b_k):
            p.add_(0.5 * torch.randn(p.shape, generator=g))
        sae.fold_input_scale(0.7)
    return sae, 2 * torch.randn(3, 10, 16, generator=g)  # three windows of ten tokens


@pytest.mark.peers
@pytest.mark.parametrize(("lam", "kw"), [
    (None, {}), (0.01, {}),  # SAELens' fixed λ = 1/(4 d) (tied), or another (exported untied); k = d_sae
    (None, {"k": 4, "dense_context": True}), (0.01, {"k": 7, "dense_context": True})])  # dense u, TopK novel code
def test_temporal_exports_to_saelens(lam, kw, tmp_path):
    sae_lens = peer("sae_lens")
    sae, x = _temporal(lam=lam, **kw)
    save_saelens(sae, tmp_path / "t")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "t"))
    assert type(theirs).__name__ == "TemporalSAE" and theirs.cfg.tied_weights == (lam is None)
    assert theirs.cfg.kval_topk == sae.cfg.k
    with torch.no_grad():
        ours = sae.codes(x)
        novel, predictable = theirs.encode_with_predictions(x)
        torch.testing.assert_close(theirs(x), ours.recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(novel, ours.novel, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(predictable, ours.predictable, atol=1e-5, rtol=1e-5)
        assert ours.predictable_recon.norm() > 0.1 * ours.recon.norm()  # the past's share is not negligible
        # and back: SAELens writes, assay reads
        theirs.save_model(str(tmp_path / "back"))
        back_sae = load_saelens(tmp_path / "back")
        assert (back_sae.cfg.k, back_sae.cfg.dense_context) == (sae.cfg.k, sae.cfg.k < sae.d_sae)
        assert (ours.novel != 0).sum(-1).max() <= sae.cfg.k
        back = back_sae.codes(x)
        for name in ("recon", "novel", "predictable"):
            torch.testing.assert_close(getattr(back, name), getattr(ours, name), atol=1e-5, rtol=1e-5)


def test_temporal_saelens_cannot_represent_is_refused_naming_each_term(tmp_path):
    with pytest.raises(ValueError, match=r"TopK_k-sparse \(k=4\).*dense ReLU") as e:
        save_saelens(_temporal(k=4)[0], tmp_path / "k")
    assert "context=" not in str(e.value) and "d_attn=" not in str(e.value)
    with pytest.raises(ValueError, match=r"context=3 tokens.*whole window"):
        save_saelens(_temporal(context=3)[0], tmp_path / "c")
    with pytest.raises(ValueError, match=r"d_sae=64 and d_attn=24"):
        save_saelens(_temporal(d_attn=24)[0], tmp_path / "a")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.peers
def test_temporal_topk_context_is_what_saelens_lacks(tmp_path):
    """Why k < d_sae is refused without dense_context: SAELens' model with the same weights and TopK novel code, but its dense
    context code, reconstructs differently."""
    sae_lens = peer("sae_lens")
    dense, x = _temporal()
    sparse = _temporal(k=4)[0]
    sparse.load_state_dict(dense.state_dict())
    save_saelens(dense, tmp_path / "t")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "t"))
    theirs.cfg.kval_topk = 4
    with torch.no_grad():
        ours = sparse.codes(x)
        gap = (theirs(x) - ours.recon).norm() / (ours.recon - ours.recon.mean((0, 1))).norm()
        torch.testing.assert_close(theirs.encode_with_predictions(x)[0].count_nonzero(-1).max(), torch.tensor(4))
    assert gap > 0.1


@pytest.mark.peers
def test_native_saelens_temporal_sae_is_refused_naming_each_term(tmp_path):
    peer("sae_lens")
    from sae_lens.saes.temporal_sae import TemporalSAE as TheirTemporalSAE
    from sae_lens.saes.temporal_sae import TemporalSAEConfig

    theirs = TheirTemporalSAE(TemporalSAEConfig(d_in=16, d_sae=64, n_heads=2, bottleneck_factor=4, kval_topk=4))
    theirs.save_model(str(tmp_path / "t"))  # its own initialisation: learned-looking v_ctx, c_proj
    with pytest.raises(ValueError, match=r"v_ctx, c_proj.*learned") as e:
        load_saelens(tmp_path / "t")
    assert "TopK" not in str(e.value)  # its TopK_4 novel code alone is representable (dense_context)
