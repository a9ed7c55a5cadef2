"""`assay sae train` trains every architecture in the registry (RA-SAE and SpaDE included) and transcoders
(`--output-site`, `--skip`) from a store that cached both sites in one pass; bad combinations fail by name."""

import pytest
import torch
from typer.testing import CliRunner

from assay.cli import app
from assay.dictionaries.registry import ARCHITECTURES, load_sae
from assay.models.transformer import Transformer, TransformerConfig
from assay.store import write_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "s"
    model = Transformer(TransformerConfig(vocab_size=17, n_layers=1, n_heads=2, d_model=8, context=12),
                        generator=torch.Generator().manual_seed(0)).eval()
    tokens = torch.randint(0, 17, (40, 12), generator=torch.Generator().manual_seed(1))
    write_store(path, model, ["blocks.0.ln2", "blocks.0.mlp"], tokens, batch_size=8, shard_rows=96, model_name="t")
    return path, model


def _args(store_path, out, *extra):
    return ["sae", "train", "--store", str(store_path), "--site", "blocks.0.ln2", "--out", str(out),
            "--expansion", "4", "--k", "4", "--steps", "6", "--batch-size", "128", "--warmup-steps", "1",
            "--holdout-windows", "4", "--no-evaluate-model", "--no-progress", *extra]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_sae_architecture_trains_from_the_cli(arch, store, tmp_path):
    res = CliRunner().invoke(app, _args(store[0], tmp_path / arch, "--architecture", arch))
    assert res.exit_code == 0, res.output
    sae = load_sae(tmp_path / arch)
    assert sae.architecture == arch and sae.d_sae == 32
    assert "heldout_fvu" in res.output


@pytest.mark.parametrize("arch", ["topk_transcoder", "jumprelu_transcoder"])
def test_transcoders_train_from_the_cli_on_two_sites_of_one_store(arch, store, tmp_path):
    path, model = store
    res = CliRunner().invoke(app, _args(path, tmp_path / arch, "--architecture", arch, "--output-site",
                                        "blocks.0.mlp", "--skip", "--resample-every", "2"))
    assert res.exit_code == 0, res.output
    tc = load_sae(tmp_path / arch)
    assert tc.architecture == arch and tc.cfg.skip and tc.d_out == 8
    fvu = float(next(line for line in res.output.splitlines() if line.startswith("heldout_fvu")).split()[-1])
    x = torch.randn(5, 8)
    assert tc.transcode(x).shape == (5, 8) and fvu == fvu  # a number, scored on the output site


def test_bad_cli_combinations_are_named(store, tmp_path):
    path, _ = store
    res = CliRunner().invoke(app, _args(path, tmp_path / "a", "--architecture", "topk_transcoder"))
    assert res.exit_code != 0 and "output site" in res.output
    res = CliRunner().invoke(app, _args(path, tmp_path / "b", "--output-site", "blocks.0.mlp"))
    assert res.exit_code != 0 and "is an SAE" in res.output
    res = CliRunner().invoke(app, _args(path, tmp_path / "c", "--skip"))
    assert res.exit_code != 0 and "transcoder option" in res.output
