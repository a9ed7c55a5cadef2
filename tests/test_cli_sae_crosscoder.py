"""`assay sae train --architecture crosscoder --site A --cross-site B` (two layers of one store) or
`--cross-store S` (one site of two models cached on the same tokens): the crosscoder equals one trained by hand
with `train_saes` on batches built here (same rows, sources scaled to E‖a^m‖ = √d, scales folded back by
hand); its held-out FVU per source and overall match a hand computation; the artifact reloads; bad inputs
(different widths, unknown site, one source, repeats, different tokens, options of another architecture) fail
by name."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from assay.artifact import load_artifact
from assay.cli import app
from assay.dictionaries.registry import build_sae, load_sae
from assay.dictionaries.trainer import SAETrainConfig, train_saes
from assay.models.transformer import Transformer, TransformerConfig
from assay.store import ActivationStore, write_store

pytestmark = pytest.mark.usefixtures("one_thread")
SITES = ["blocks.0", "blocks.1"]


def _store(path, model_seed, token_seed=1):
    model = Transformer(TransformerConfig(vocab_size=17, n_layers=2, n_heads=2, d_model=8, context=12),
                        generator=torch.Generator().manual_seed(model_seed)).eval()
    tokens = torch.randint(0, 17, (40, 12), generator=torch.Generator().manual_seed(token_seed))
    write_store(path, model, [*SITES, "blocks.0.mlp.fc_in"], tokens, batch_size=8, shard_rows=96, model_name="t")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("st") / "s", 0)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second model cached on the same tokens."""
    return _store(tmp_path_factory.mktemp("st") / "o", 1)


def _args(path, out, *extra):
    return ["sae", "train", "--store", str(path), "--site", "blocks.0", "--out", str(out), "--expansion", "2",
            "--steps", "5", "--batch-size", "128", "--warmup-steps", "1", "--holdout-windows", "4", "--seed", "3",
            "--no-evaluate-model", "--no-progress", *extra]


def _figure(output, name):
    return next(line for line in output.splitlines() if line.startswith(name + ":")).split(": ", 1)[1]


def _check_against_hand(res, out, sources, kw):
    """The CLI's crosscoder equals one trained by hand on (store path, site) ``sources``; FVU by hand."""
    assert res.exit_code == 0, res.output
    cc = load_sae(out)
    assert cc.architecture == "crosscoder" and cc.n_sources == 2 and cc.d_in == 16 and cc.d_sae == 16
    sts = [(ActivationStore.open(p), site) for p, site in sources]
    st = sts[0][0]
    cut = (40 - 4) * 12

    def rows(step):
        r = st.batch_rows(step, batch_size=128, seed=3)
        return r[(st.positions[r] >= 0) & (r < cut)]

    r0 = rows(0)
    scales = [math.sqrt(8) / s_.read_rows(site, r0).float().norm(dim=-1).mean().item() for s_, site in sts]
    batches = [torch.cat([s_.read_rows(site, rows(b)) * c for (s_, site), c in zip(sts, scales)], -1)
               for b in range(5)]
    ref, _ = train_saes(build_sae("crosscoder", d_in=16, d_sae=16, n_sources=2, seed=3, **kw),
                        SAETrainConfig(steps=5, warmup_steps=1, progress=False), batches)
    s = torch.tensor(scales).repeat_interleave(8)
    with torch.no_grad():  # fold by hand: the crosscoder then takes raw sources
        ref.W_enc.mul_(s[:, None])
        ref.W_dec.div_(s)
        ref.b_dec.div_(s)
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(cc.state_dict()[name], t, msg=name)

    # held-out FVU per source and overall, by hand on the last 4 windows (BOS rows left out)
    keep = st.positions[cut:st.n_rows] >= 0
    x = torch.cat([s_.read(site, cut, st.n_rows)[keep].float() for s_, site in sts], -1)
    with torch.no_grad():
        x_hat = cc.decode(cc.encode(x))
    per = [((x - x_hat)[:, m * 8:(m + 1) * 8].pow(2).sum() / (x[:, m * 8:(m + 1) * 8]
            - x[:, m * 8:(m + 1) * 8].mean(0)).pow(2).sum()).item() for m in range(2)]
    assert json.loads(_figure(res.output, "heldout_fvu_per_source")) == pytest.approx(per, abs=1e-4)
    assert float(_figure(res.output, "heldout_fvu")) == pytest.approx(
        ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item(), abs=1e-4)
    meta = load_artifact(out, kind="sae").meta
    assert meta["sources"] == [[str(p), site] for p, site in sources]
    assert meta["heldout_fvu_per_source"] == pytest.approx(per, abs=1e-5)


@pytest.mark.parametrize("topk", [False, True])
def test_crosscoder_across_layers_from_the_cli_equals_one_trained_by_hand(store, tmp_path, topk):
    extra = ["--crosscoder-topk", "--k", "3"] if topk else ["--l1-coef", "0.5"]
    res = CliRunner().invoke(app, _args(store, tmp_path / "cc", "--architecture", "crosscoder",
                                        "--cross-site", "blocks.1", *extra))
    kw = {"activation": "topk", "k": 3} if topk else {"l1_coef": 0.5}
    _check_against_hand(res, tmp_path / "cc", [(store, s) for s in SITES], kw)


def test_crosscoder_across_two_models_from_the_cli_equals_one_trained_by_hand(store, other, tmp_path):
    res = CliRunner().invoke(app, _args(store, tmp_path / "cc", "--architecture", "crosscoder",
                                        "--cross-store", str(other)))
    _check_against_hand(res, tmp_path / "cc", [(store, "blocks.0"), (other, "blocks.0")], {"l1_coef": 1.0})


def test_bad_crosscoder_inputs_are_named(store, tmp_path):
    shifted = _store(tmp_path / "shifted", 1, token_seed=2)
    def run(*extra):
        res = CliRunner().invoke(app, _args(store, tmp_path / "x", *extra))
        assert res.exit_code != 0
        return res.output

    assert "different widths" in run("--architecture", "crosscoder", "--cross-site", "blocks.0.mlp.fc_in")
    assert "no site 'blocks.7'" in run("--architecture", "crosscoder", "--cross-site", "blocks.7")
    assert "give --cross-site" in run("--architecture", "crosscoder")
    assert "with --architecture crosscoder" in run("--cross-site", "blocks.1")
    assert "crosscoder option" in run("--l1-coef", "0.5")
    assert "crosscoder option" in run("--architecture", "topk", "--crosscoder-topk")
    assert "transcoder option" in run("--architecture", "crosscoder", "--cross-site", "blocks.1",
                                      "--output-site", "blocks.1")
    assert "repeat" in run("--architecture", "crosscoder", "--cross-site", "blocks.0")
    assert "different tokens (first at row" in run("--architecture", "crosscoder", "--cross-store", str(shifted))
    assert "with --architecture crosscoder" in run("--cross-store", str(shifted))
    assert "no L1 term" in run("--architecture", "crosscoder", "--cross-site", "blocks.1", "--crosscoder-topk",
                               "--l1-coef", "1")


def test_a_crosscoder_checkpoint_refuses_other_sources_on_resume(store, other, tmp_path):
    # the checkpoint records the (store, site) sources; resuming with another source would make a hybrid run
    ck = tmp_path / "ck"
    first = CliRunner().invoke(app, _args(store, tmp_path / "a", "--architecture", "crosscoder", "--cross-site",
                                          "blocks.1", "--checkpoint", str(ck)))
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, _args(store, tmp_path / "b", "--architecture", "crosscoder", "--cross-store",
                                          str(other), "--checkpoint", str(ck)))
    assert again.exit_code != 0
    assert "changed settings" in str(again.exception) + again.output and "blocks.1" in str(again.exception) + again.output
