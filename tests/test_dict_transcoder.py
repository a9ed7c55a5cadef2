"""Transcoders and skip-transcoders (Dunefsky et al. 2024; Paulo et al. 2025) against independent references:
the target is the output site (doubling the MLP doubles ŷ exactly), a skip-transcoder on a linear MLP matches
least squares, a transcoder on a planted sparse map recovers the planted output directions, the spliced
evaluation with the true MLP reproduces the clean model exactly, and training from a store reads both sites
at the same rows."""

import copy

import pytest
import torch

from assay.dictionaries.batches import live_batches
from assay.dictionaries.registry import build_sae, load_sae, save_sae
from assay.dictionaries.trainer import SAETrainConfig, train_saes
from assay.dictionaries.transcoder import is_transcoder
from assay.evaluate.reconstruction import reconstruction_metrics
from assay.evaluate.recovery import feature_recovery
from assay.evaluate.spliced import replacement_metrics, spliced_metrics
from assay.models.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(x, y, steps, batch=256, seed=1):
    def batches(start):
        g = torch.Generator().manual_seed(seed)
        for _ in range(start, steps):
            i = torch.randint(0, x.shape[0], (batch,), generator=g)
            yield x[i], y[i]
    return batches


def _planted(n=6000, n_feat=48, d_in=32, d_out=12, p=0.06, seed=0):
    """Sparse features f (Bernoulli(p) × U(0.5, 1.5)) read in superposition, x = f E, and written by the
    planted map y = f D: the transcoder's latents should be the features and its atoms the rows of D."""
    g = torch.Generator().manual_seed(seed)
    f = (torch.rand(n, n_feat, generator=g) < p) * (0.5 + torch.rand(n, n_feat, generator=g))
    E = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(n_feat, d_out, generator=g), dim=-1)
    return f @ E, f @ D, D


@pytest.mark.parametrize("arch", ["topk_transcoder", "jumprelu_transcoder"])
def test_target_is_the_output_site_doubling_the_mlp_doubles_the_output(arch):
    # SAELens-lineage pitfall (circuits.md §1.5.1): a "transcoder" whose loss used the input as target.
    x, y, _ = _planted(n=2000)
    kw = {"k": 4} if arch == "topk_transcoder" else {"target_l0": 4.0, "l0_coef": 1.0}
    cfg = SAETrainConfig(steps=40, lr=3e-3, warmup_steps=4)
    one, _ = train_saes(build_sae(arch, d_in=32, d_out=12, d_sae=64, skip=True, **kw), cfg, _pairs(x, y, 40))
    two, res = train_saes(build_sae(arch, d_in=32, d_out=12, d_sae=64, skip=True, **kw), cfg, _pairs(x, 2 * y, 40))
    # normalisation makes the two runs identical in scaled space; folding s_out/2 doubles ŷ exactly
    torch.testing.assert_close(two.transcode(x[:100]), 2 * one.transcode(x[:100]), rtol=1e-6, atol=1e-6)
    assert res.output_scale != res.input_scale
    assert is_transcoder(one)


def test_skip_transcoder_on_a_linear_mlp_matches_least_squares():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 10, generator=g) * 2.0
    A, c = torch.randn(10, 6, generator=g), torch.randn(6, generator=g)
    y = x @ A + c  # a linear "MLP": the closed-form optimum is the least-squares map, FVU 0
    ls = torch.linalg.lstsq(torch.cat([x, torch.ones(4000, 1)], 1), y).solution
    ls_pred = torch.cat([x, torch.ones(4000, 1)], 1) @ ls
    cfg = SAETrainConfig(steps=300, lr=1e-2, warmup_steps=20)
    skip, _ = train_saes(build_sae("topk_transcoder", d_in=10, d_out=6, d_sae=32, k=1, skip=True), cfg,
                         _pairs(x, y, 300))
    plain, _ = train_saes(build_sae("topk_transcoder", d_in=10, d_out=6, d_sae=32, k=1), cfg, _pairs(x, y, 300))
    with torch.no_grad():
        fvu_skip = reconstruction_metrics(y, skip.transcode(x)).fvu
        fvu_plain = reconstruction_metrics(y, plain.transcode(x)).fvu
        gap = reconstruction_metrics(ls_pred, skip.transcode(x)).mse / ls_pred.var(0).sum().item()
    # measured: FVU skip 1.1e-7, plain (one latent, no skip) 0.30; distance to the least-squares map 1.1e-7
    assert fvu_skip < 1e-4 and gap < 1e-4, (fvu_skip, gap)
    assert fvu_plain > 20 * fvu_skip


def test_transcoder_on_a_planted_map_recovers_the_output_directions(tmp_path):
    x, y, D = _planted()
    tc = build_sae("topk_transcoder", d_in=32, d_out=12, d_sae=96, k=5, seed=0)
    control = feature_recovery(tc.W_dec.detach(), D)  # the untrained atoms (random directions)
    tc, res = train_saes(tc, SAETrainConfig(steps=600, lr=5e-3, warmup_steps=30), _pairs(x, y, 600))
    rec = feature_recovery(tc.W_dec.detach(), D)
    with torch.no_grad():
        fvu = reconstruction_metrics(y, tc.transcode(x)).fvu
    # measured: 0.96 of the 48 planted output directions recovered at cosine ≥ 0.9 (untrained atoms: 0.0);
    # FVU of y 0.073 (an SAE of the same size on x reaches FVU 0.058 of x)
    assert rec.fraction_recovered > 0.9 and control.fraction_recovered < 0.2, (rec, control.fraction_recovered, fvu)
    assert fvu < 0.1, fvu
    back = load_sae(save_sae(tmp_path / "tc", tc))
    torch.testing.assert_close(back.transcode(x[:20]), tc.transcode(x[:20]))


def test_sparsify_recipe_decoder_starts_at_zero_and_is_never_renormalised():
    x, y, _ = _planted(n=2000)
    tc = build_sae("topk_transcoder", d_in=32, d_out=12, d_sae=64, k=4, unit_decoder=False)
    assert torch.equal(tc.W_dec.detach(), torch.zeros(64, 12))
    tc, _ = train_saes(tc, SAETrainConfig(steps=60, lr=3e-3, warmup_steps=5, normalize_inputs=False),
                       _pairs(x, y, 60))
    norms = tc.W_dec.detach().norm(dim=-1)
    assert norms.max() > 0 and not torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-3)
    with torch.no_grad():
        assert reconstruction_metrics(y, tc.transcode(x)).fvu < 0.9  # it learns from the zero start


def test_decoder_bias_off_holds_b_dec_at_zero_through_training_and_saving(tmp_path):
    x, y, _ = _planted(n=2000)
    tc = build_sae("topk_transcoder", d_in=32, d_out=12, d_sae=64, k=4, decoder_bias=False)
    assert "b_dec" not in dict(tc.named_parameters()) and "b_dec" in tc.state_dict()
    trained, _ = train_saes(tc, SAETrainConfig(steps=60, lr=3e-3, warmup_steps=5), _pairs(x, y, 60))
    assert torch.equal(trained.b_dec, torch.zeros(12))  # no median init, no gradient step, folding keeps 0
    with torch.no_grad():
        assert reconstruction_metrics(y, trained.transcode(x)).fvu < 0.9
    back = load_sae(save_sae(tmp_path / "tc", trained))
    assert not back.cfg.decoder_bias and torch.equal(back.b_dec, torch.zeros(12))
    torch.testing.assert_close(back.transcode(x[:8]), trained.transcode(x[:8]))


def test_fold_scales_maps_raw_inputs_to_raw_outputs():
    tc = build_sae("jumprelu_transcoder", d_in=8, d_out=5, d_sae=20, skip=True, seed=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(30, 8, generator=g)
    s_in, s_out = 3.0, 0.25
    scaled = tc.transcode(s_in * x)
    tc.fold_scales(s_in, s_out)
    torch.testing.assert_close(tc.transcode(x), scaled / s_out)
    with pytest.raises(TypeError, match="fold_scales"):
        tc.fold_input_scale(2.0)


def _lm():
    cfg = TransformerConfig(vocab_size=17, n_layers=1, n_heads=2, d_model=16, context=12)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # make the MLP matter for the logits
        model.blocks[0].mlp.fc_out.weight.mul_(20)
        model.unembed.weight.mul_(10)
    return model.eval()


def _tokens(n, seed):
    return torch.randint(0, 17, (n, 12), generator=torch.Generator().manual_seed(seed))


def test_spliced_transcoder_splice_reads_the_input_site_and_replaces_the_mlp():
    model = _lm()
    tokens = [_tokens(16, 5)]
    mlp = copy.deepcopy(model.blocks[0].mlp)  # a copy: the hooked module itself must not run inside its hook
    exact = spliced_metrics(model, "blocks.0.mlp", tokens, mlp, input_site="blocks.0.ln2")
    assert exact.ce_sae == pytest.approx(exact.ce_clean, abs=1e-6) and exact.kl_sae == pytest.approx(0, abs=1e-6)
    assert exact.kl_zero > 0.05  # ablating the MLP output matters, so the next check has teeth
    # one pass captures both sites: train a transcoder live, replace the MLP, recover most of the KL
    batches = live_batches(model, "blocks.0.ln2", (_tokens(32, s) for s in range(10_000)), batch_size=256,
                           output_site="blocks.0.mlp")
    tc, _ = train_saes(build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=64, k=8, skip=True),
                       SAETrainConfig(steps=120, lr=5e-3, warmup_steps=10), batches)
    m = spliced_metrics(model, "blocks.0.mlp", tokens, tc.transcode, input_site="blocks.0.ln2")
    # measured: KL score 0.994 (KL 0.0021 spliced vs 0.339 with the MLP output zeroed)
    assert m.kl_score > 0.95, m
    with pytest.raises(ValueError, match="input_site"):
        spliced_metrics(model, "blocks.0.mlp", tokens, tc.transcode, input_site="blocks.0.mlp")
    with pytest.raises(ValueError, match="earlier in the forward pass"):
        spliced_metrics(model, "blocks.0.ln2", tokens, tc.transcode, input_site="blocks.0.mlp")


def test_replacement_model_splices_every_layer_at_once():
    cfg = TransformerConfig(vocab_size=17, n_layers=2, n_heads=2, d_model=16, context=12)
    model = Transformer(cfg, generator=torch.Generator().manual_seed(1)).eval()
    tokens = [_tokens(8, 2)]
    true = {f"blocks.{i}.mlp": (f"blocks.{i}.ln2", copy.deepcopy(model.blocks[i].mlp)) for i in range(2)}
    exact = replacement_metrics(model, true, tokens)  # every MLP replaced by itself: the clean model
    assert exact.kl == pytest.approx(0, abs=1e-6) and exact.top1_agreement == 1.0
    assert exact.ce_replaced == pytest.approx(exact.ce_clean, abs=1e-6)
    halved = {s: (i, lambda h, f=f: 0.5 * f(h)) for s, (i, f) in true.items()}
    both = replacement_metrics(model, halved, tokens)
    assert both.kl > 0
    # one splice through this path equals spliced_metrics' single-site splice (an independent code path)
    one = replacement_metrics(model, dict(list(halved.items())[:1]), tokens)
    ref = spliced_metrics(model, "blocks.0.mlp", tokens, halved["blocks.0.mlp"][1], input_site="blocks.0.ln2")
    assert one.kl == pytest.approx(ref.kl_sae, rel=1e-6) and one.ce_replaced == pytest.approx(ref.ce_sae, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        replacement_metrics(model, {}, tokens)


def test_transcoder_from_a_store_reads_both_sites_at_the_same_rows(tmp_path):
    from assay.store import ActivationStore, write_store

    model = _lm()
    write_store(tmp_path / "st", model, ["blocks.0.ln2", "blocks.0.mlp"], _tokens(40, 1), batch_size=8,
                shard_rows=96, model_name="tiny")
    store = ActivationStore.open(tmp_path / "st")
    cfg = SAETrainConfig(steps=5, warmup_steps=1)
    tc = build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=32, k=4)
    got, res = train_saes(tc, cfg, store, site="blocks.0.ln2", output_site="blocks.0.mlp", batch_size=64, seed=0)
    rows = store.batch_rows(0, batch_size=64, seed=0)
    rows = rows[store.positions[rows] >= 0]
    x, y = store.read_rows("blocks.0.ln2", rows), store.read_rows("blocks.0.mlp", rows)
    with torch.no_grad():  # the pairs are aligned: the MLP applied to the stored inputs gives the stored outputs
        torch.testing.assert_close(model.blocks[0].mlp(x), y, atol=1e-5, rtol=1e-5)
    same, _ = train_saes(build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=32, k=4), cfg,
                         [(store.read_rows("blocks.0.ln2", r), store.read_rows("blocks.0.mlp", r))
                          for r in (store.batch_rows(b, batch_size=64, seed=0) for b in range(5))
                          for r in [r[store.positions[r] >= 0]]])
    torch.testing.assert_close(got.W_dec, same.W_dec)
    # bad input: named clearly
    with pytest.raises(ValueError, match="needs output_site"):
        train_saes(build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=32, k=4), cfg, store,
                   site="blocks.0.ln2", batch_size=64)
    with pytest.raises(ValueError, match="are SAEs"):
        train_saes(build_sae("topk", d_in=16, d_sae=32, k=4), cfg, store, site="blocks.0.ln2",
                   output_site="blocks.0.mlp", batch_size=64)
    with pytest.raises(ValueError, match="both 'blocks.0.ln2'"):
        train_saes(build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=32, k=4), cfg, store,
                   site="blocks.0.ln2", output_site="blocks.0.ln2", batch_size=64)
    with pytest.raises(ValueError, match="d_out=8"):
        train_saes(build_sae("topk_transcoder", d_in=16, d_out=8, d_sae=32, k=4), cfg, store,
                   site="blocks.0.ln2", output_site="blocks.0.mlp", batch_size=64)
    with pytest.raises(ValueError, match="pairs"):
        train_saes(build_sae("topk_transcoder", d_in=16, d_out=16, d_sae=32, k=4), cfg, [torch.randn(8, 16)] * 5)
