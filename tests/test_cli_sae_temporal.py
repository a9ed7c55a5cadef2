"""`assay sae train --architecture temporal`: a temporal SAE trained from whole windows equals one trained by
hand with `train_saes` on the same window batches (the first windows only: the last are held out); its
held-out FVU and predictable share match hand computations; the artifact reloads; a store without window
boundaries, windows shorter than the context and temporal options on another architecture fail by name."""

import shutil

import pytest
import torch
from test_store import Tiny
from test_store_sequences import DOC_LENGTHS, cut_windows
from typer.testing import CliRunner

from assay.cli import app
from assay.dictionaries.registry import load_sae
from assay.dictionaries.store_run import StoreSAEConfig, train_sae_on_store
from assay.dictionaries.temporal import TemporalConfig, TemporalSAE
from assay.dictionaries.trainer import SAETrainConfig, train_saes
from assay.store import SequenceReader, StoreError, write_store
from assay.store.manifest import read_manifest, write_manifest
from assay.store.order import batch_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "s"
    write_store(path, Tiny(d=8).eval(), ["layers.0"], cut_windows(DOC_LENGTHS * 3, seed=1), batch_size=8,
                shard_rows=64)
    return path


def _args(path, out, *extra):
    return ["sae", "train", "--store", str(path), "--site", "layers.0", "--out", str(out), "--architecture",
            "temporal", "--expansion", "2", "--k", "3", "--heads", "2", "--steps", "5", "--batch-size", "48",
            "--warmup-steps", "1", "--holdout-windows", "5", "--seed", "3", "--no-evaluate-model", "--no-progress",
            *extra]


def _figure(output, name):
    return float(next(line for line in output.splitlines() if line.startswith(name + ":")).split()[-1])


@pytest.mark.parametrize("dense_context", [False, True])
def test_temporal_sae_from_the_cli_equals_one_trained_by_hand(dense_context, store, tmp_path):
    res = CliRunner().invoke(app, _args(store, tmp_path / "t", *(["--dense-context"] if dense_context else [])))
    assert res.exit_code == 0, res.output
    sae = load_sae(tmp_path / "t")
    assert isinstance(sae, TemporalSAE) and sae.d_sae == 16 and sae.cfg.n_heads == 2
    assert sae.cfg.dense_context == dense_context

    reader = SequenceReader.open(store)
    n_train = reader.n_windows - 5  # 69 windows of 8 tokens; 48 tokens a step = 6 whole windows
    batches = [reader.read_windows("layers.0", batch_rows(b, n=n_train, batch_size=6, seed=3)) for b in range(5)]
    assert all(int(b.windows.max()) < n_train for b in batches)
    ref, _ = train_saes(TemporalSAE(TemporalConfig(d_in=8, d_sae=16, k=3, n_heads=2, seed=3,
                                                   dense_context=dense_context)),
                        SAETrainConfig(steps=5, warmup_steps=1, progress=False), batches)
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], t, msg=name)

    held = reader.read_windows("layers.0", range(n_train, reader.n_windows))
    x, m = held.acts, held.mask
    with torch.no_grad():
        c = sae.codes(x, m)
    xm = x[m]
    fvu = ((xm - c.recon[m]).pow(2).sum() / (xm - xm.mean(0)).pow(2).sum()).item()
    p, n = c.predictable_recon[m].pow(2).sum(), c.novel_recon[m].pow(2).sum()
    assert _figure(res.output, "heldout_fvu") == pytest.approx(fvu, abs=1e-4)
    assert _figure(res.output, "predictable_share") == pytest.approx((p / (p + n)).item(), abs=1e-4)
    assert _figure(res.output, "tortuosity") >= 1.0  # an arc is never shorter than its chord


def test_bad_temporal_inputs_are_named(store, tmp_path):
    def run(path, *extra):
        res = CliRunner().invoke(app, _args(path, tmp_path / "x", *extra))
        assert res.exit_code != 0
        return res.output

    assert "shorter than the temporal SAE's context of 9" in run(store, "--temporal-context", "9")
    flat = tmp_path / "flat"
    shutil.copytree(store, flat)
    mf = read_manifest(flat)
    write_manifest(flat, mf._replace(config={k: v for k, v in mf.config.items() if k != "context_length"}))
    assert "no window length" in run(flat)
    res = CliRunner().invoke(app, ["sae", "train", "--store", str(store), "--site", "layers.0", "--out",
                                   str(tmp_path / "y"), "--heads", "2", "--no-evaluate-model"])
    assert res.exit_code != 0 and "temporal option" in res.output
    res = CliRunner().invoke(app, ["sae", "train", "--store", str(store), "--site", "layers.0", "--out",
                                   str(tmp_path / "y"), "--dense-context", "--no-evaluate-model"])
    assert res.exit_code != 0 and "dense_context is a temporal option" in res.output
    assert "transcoder option" in run(store, "--output-site", "layers.1")
    assert "always masks the BOS" in run(store, "--no-exclude-special")


def test_the_sequence_reader_draws_from_the_first_windows_only(store):
    reader = SequenceReader.open(store)
    seen = [b.windows for b in reader.batches("layers.0", batch_size=3, seed=0, epochs=2, windows=10)]
    assert len(seen) == 6 and all(int(w.max()) < 10 for w in seen)
    assert len(set(torch.cat(seen[:3]).tolist())) == 9  # one epoch: 3 batches of distinct windows
    for bad in (0, reader.n_windows + 1):
        with pytest.raises(StoreError, match="windows must lie in"):
            reader.batches("layers.0", batch_size=3, seed=0, windows=bad)


def test_the_token_level_trainer_points_to_the_crosscoder_and_temporal_trainers(store):
    for arch, where in (("temporal", "train_temporal_on_store"), ("crosscoder", "train_crosscoder_on_store")):
        with pytest.raises(ValueError, match=where):
            train_sae_on_store(store, "layers.0", StoreSAEConfig(architecture=arch, holdout_windows=1))
