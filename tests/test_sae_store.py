"""SAE training from an activation store end to end (tiny model): `assay sae train`, held-out
metrics and CE loss recovered, exact resume, and bad input through the store path."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from assay.artifact import ArtifactError
from assay.cli import app
from assay.config import ConfigError
from assay.dictionaries.registry import build_sae, load_sae
from assay.dictionaries.store_run import StoreSAEConfig, train_sae_on_store
from assay.dictionaries.trainer import NonFiniteActivationsError, SAETrainConfig, SAETrainer
from assay.store import ActivationStore, write_store
from assay.store.manifest import shard_file
from assay.store.shardfile import read_header

V, D, T, N_WIN = 23, 16, 12, 40  # vocab, width, window length, windows → 480 rows


pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, h):
        return h + torch.tanh(self.lin(h))


class TinyLM(nn.Module):
    """Embedding → two residual blocks → unembedding; the output of ``blocks.0`` (the residual stream) is the site."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.head = nn.Linear(D, V)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h = self.emb(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


def _tokens(n_win, seed=1):
    """Sequences that mostly follow t → (3t + 1) mod V, so a trained model beats ablations."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.empty(n_win, T, dtype=torch.long)
    tok[:, 0] = 0  # BOS
    tok[:, 1] = torch.randint(1, V, (n_win,), generator=g)
    for t in range(2, T):
        rnd = torch.randint(1, V, (n_win,), generator=g)
        tok[:, t] = torch.where(torch.rand(n_win, generator=g) < 0.8, (3 * tok[:, t - 1] + 1) % V, rnd)
    return tok


def _trained_model():
    model = TinyLM()
    data = _tokens(64, seed=7)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        logits = model(data)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _store(path, n_win=N_WIN):
    from assay.corpora import TokenWindows

    tokens = _tokens(n_win)
    positions = torch.arange(-1, T - 1).repeat(n_win, 1)  # position −1: the BOS of every window
    windows = TokenWindows(tokens, torch.arange(n_win), positions)
    model = _trained_model()
    write_store(path, model, "blocks.0", windows, batch_size=8, shard_rows=96, model_name="tiny-lm")
    return model, tokens


CFG = StoreSAEConfig(expansion=4, k=4, steps=30, batch_size=64, warmup_steps=3, holdout_windows=8, lr=3e-3)


def test_train_on_store_reports_heldout_and_ce_recovered(tmp_path):
    model, tokens = _store(tmp_path / "s")
    store = ActivationStore.open(tmp_path / "s")
    # the layout the pipeline relies on: row = window·T + t
    assert torch.equal(store.tokens.all().reshape(N_WIN, T), tokens)
    said = []
    res = train_sae_on_store(store, "blocks.0", CFG, model=model, out=tmp_path / "sae", log=said.append)
    rec, sp = res.reconstruction, res.sparsity
    # a line before and after each evaluation step, the second with its figures and seconds
    assert [s.split(":")[0] for s in said] == ["held-out metrics"] * 2 + ["CE loss recovered"] * 2
    assert said[0].endswith("...") and said[2].endswith("...")
    assert f"FVU {rec.fvu:.4f}" in said[1] and f"{res.spliced.ce_recovered:.4f}" in said[3]
    assert said[1].endswith(" s)") and said[3].endswith(" s)")
    assert rec.n_tokens == 8 * (T - 1)  # held-out windows, BOS rows dropped
    # independent check of the held-out FVU: recompute from the raw rows with the saved SAE
    sae = load_sae(tmp_path / "sae")
    cut = (N_WIN - 8) * T
    x = store.read("blocks.0", cut, store.n_rows)[store.positions[cut:] >= 0]
    x_hat = sae.decode(sae.encode(x))
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert math.isclose(rec.fvu, fvu.item(), rel_tol=1e-4)
    assert rec.fvu < 0.5 and sp.l0 <= 4 + 1e-9
    s = res.spliced
    assert s.n_tokens == 8 * (T - 1)
    assert s.ce_zero > s.ce_clean and s.ce_recovered > 0.5
    assert math.isclose(s.ce_recovered, (s.ce_zero - s.ce_sae) / (s.ce_zero - s.ce_clean), rel_tol=1e-9)
    # the BOS rows and held-out rows never reach training: a batch's rows are all < cut with position ≥ 0
    from assay.dictionaries.batches import store_batches

    keep = lambda r: (r < cut) & (store.positions[r] >= 0)  # noqa: E731
    _, rows_of = store_batches(store, "blocks.0", batch_size=64, seed=0, start_batch=0, n_batches=1,
                               keep_rows=keep, prefetch=0)
    rows = rows_of(0)
    assert rows.numel() > 0 and bool((rows < cut).all()) and bool((store.positions[rows] >= 0).all())


def test_resume_from_store_is_exact_and_finished_run_takes_no_step(tmp_path):
    _store(tmp_path / "s")
    store = ActivationStore.open(tmp_path / "s")
    full = train_sae_on_store(store, "blocks.0", CFG, checkpoint=tmp_path / "a").sae
    half = StoreSAEConfig(**{**CFG.__dict__, "steps": 30, "checkpoint_every": 10})
    # interrupt after 10 steps by making the store raise on the batch of step 10 (its 11th read)
    reads = {"n": 0}
    orig = store.read_rows

    def flaky(site, rows, **kw):
        reads["n"] += 1
        if reads["n"] == 11:
            raise KeyboardInterrupt
        return orig(site, rows, **kw)

    store.read_rows = flaky
    with pytest.raises(KeyboardInterrupt):
        train_sae_on_store(store, "blocks.0", half, checkpoint=tmp_path / "b")
    store.read_rows = orig
    back = SAETrainer(build_sae("topk", d_in=D, d_sae=4 * D, k=4), SAETrainConfig(steps=30))
    back.load_checkpoint(tmp_path / "b", settings_must_match=False)  # only to read the step
    assert back.step == 10
    with pytest.raises(ArtifactError, match="hybrid run"):  # but a resume with other settings is refused
        back.load_checkpoint(tmp_path / "b")
    resumed = train_sae_on_store(store, "blocks.0", half, checkpoint=tmp_path / "b")
    for (name, p), q in zip(full.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(p, q), name
    again = train_sae_on_store(store, "blocks.0", CFG, checkpoint=tmp_path / "a")
    assert again.train.steps == 30
    for p, q in zip(full.state_dict().values(), again.sae.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("change", [{"lr": 5e-3}, {"batch_size": 32}, {"warmup_steps": 7}, {"decay_fraction": 0.5},
                                    {"seed": 1}])
def test_resume_with_changed_settings_is_refused(tmp_path, change):
    """Every change that breaks 'resumed = uninterrupted' is refused, naming the field."""
    _store(tmp_path / "s")
    store = ActivationStore.open(tmp_path / "s")
    half = StoreSAEConfig(**{**CFG.__dict__, "steps": 4})
    train_sae_on_store(store, "blocks.0", half, checkpoint=tmp_path / "ck")
    other = StoreSAEConfig(**{**half.__dict__, **change})
    name = next(iter(change))  # the store config and the trainer name each field alike
    # (the seed also seeds the SAE's init, so it is caught by the SAE-config check first)
    with pytest.raises(ArtifactError, match="checkpoint holds SAEs" if name == "seed" else f"hybrid run.*{name}"):
        train_sae_on_store(store, "blocks.0", other, checkpoint=tmp_path / "ck")
    # progress and checkpoint frequency do not change the result: allowed
    same = StoreSAEConfig(**{**half.__dict__, "progress": not half.progress, "checkpoint_every": 2})
    assert train_sae_on_store(store, "blocks.0", same, checkpoint=tmp_path / "ck").train.steps == 4


def test_cli_sae_train_on_a_tiny_store(tmp_path):
    _store(tmp_path / "s")
    args = ["sae", "train", "--store", str(tmp_path / "s"), "--site", "blocks.0", "--out", str(tmp_path / "o"),
            "--expansion", "4", "--k", "4", "--steps", "12", "--batch-size", "64", "--warmup-steps", "2",
            "--holdout-windows", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "heldout_fvu" in res.output and "not an offline model" in res.output
    sae = load_sae(tmp_path / "o")
    assert sae.d_sae == 4 * D and sae.cfg.k == 4
    res = CliRunner().invoke(app, [*args, "--k", "999", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "k must be in 1..d_sae" in res.output and "Traceback" not in res.output
    # the output is checked before any training: an existing SAE is never silently replaced ...
    before = (tmp_path / "o" / "config.json").read_bytes()
    res = CliRunner().invoke(app, [*args, "--steps", "100000"])  # would take minutes if it trained first
    assert res.exit_code == 2 and "already exists" in res.output and "heldout_fvu" not in res.output
    assert (tmp_path / "o" / "config.json").read_bytes() == before
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0  # ... unless asked
    # ... and an output that cannot be written fails at once (here: its parent is a file)
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(app, [*args, "--steps", "100000", "--out", str(tmp_path / "file" / "o")])
    assert res.exit_code == 2 and "cannot write the output" in res.output


def test_bad_input_through_the_store(tmp_path):
    _store(tmp_path / "s")
    store = ActivationStore.open(tmp_path / "s")
    # mismatched d_in between store and SAE
    with pytest.raises(ValueError, match="has d=16 but the SAE expects d_in=8"):
        train_sae_on_store(store, "blocks.0", CFG, sae=build_sae("topk", d_in=8, d_sae=32, k=4))
    with pytest.raises(ConfigError, match="k must be in 1..d_sae"):
        build_sae("topk", d_in=D, d_sae=8, k=9)
    with pytest.raises(ValueError, match="leaves no training window"):
        train_sae_on_store(store, "blocks.0", StoreSAEConfig(holdout_windows=N_WIN))
    # corrupted checkpoint: a clear error, nothing overwritten
    train_sae_on_store(store, "blocks.0", StoreSAEConfig(**{**CFG.__dict__, "steps": 4}), checkpoint=tmp_path / "ck")
    f = tmp_path / "ck" / "sae0.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted"):
        train_sae_on_store(store, "blocks.0", CFG, checkpoint=tmp_path / "ck")
    assert f.read_bytes() == bytes(raw)


def test_nan_in_a_store_shard_stops_naming_step_and_shard_checkpoint_intact(tmp_path):
    _store(tmp_path / "s")
    # put a NaN into shard 2 of the site (rows 192..287) behind the writer's back; the checksum
    # would catch it, so read with verify="none" to reach the trainer's own check
    rel = shard_file("blocks.0", 2)
    path = tmp_path / "s" / rel
    info = read_header(path)["acts"]
    raw = bytearray(path.read_bytes())
    row = 5  # global row 2·96 + 5 = 197 (window 16, t = 5: not a BOS row, not held out)
    off = info.begin + (row * D + 3) * 4
    raw[off:off + 4] = np.float32("nan").tobytes()
    path.write_bytes(bytes(raw))
    store = ActivationStore.open(tmp_path / "s", verify="none")
    cfg = StoreSAEConfig(**{**CFG.__dict__, "steps": 30, "checkpoint_every": 1})
    from assay.store.order import batch_rows

    per_epoch = store.n_rows // 64
    first = next(b for b in range(30) if 197 in batch_rows(b, n=store.n_rows, batch_size=64, seed=0))
    assert first < per_epoch * 5
    with pytest.raises(NonFiniteActivationsError) as err:
        train_sae_on_store(store, "blocks.0", cfg, checkpoint=tmp_path / "ck")
    msg = str(err.value)
    assert f"step {first}" in msg and "shard(s) [2]" in msg and "197" in msg
    back = SAETrainer(build_sae("topk", d_in=D, d_sae=4 * D, k=4), SAETrainConfig(steps=30))
    if first > 0:
        back.load_checkpoint(tmp_path / "ck", settings_must_match=False)  # intact and loadable, at the step before the bad batch
        assert back.step == first
        assert all(torch.isfinite(p).all() for p in back.saes[0].parameters())


def test_train_saes_on_a_store_leaves_bos_rows_out_by_default(tmp_path):
    """The library default is the CLI's: no BOS/padding row (store position −1) reaches training."""
    from assay.dictionaries.trainer import train_saes

    _store(tmp_path / "s")
    store = ActivationStore.open(tmp_path / "s")
    seen = []
    orig = store.read_rows

    def spy(site, rows, **kw):
        seen.append(torch.as_tensor(rows))
        return orig(site, rows, **kw)

    store.read_rows = spy
    cfg = SAETrainConfig(steps=5, warmup_steps=1, lr=1e-3)
    sae, res = train_saes(build_sae("topk", d_in=D, d_sae=4 * D, k=4), cfg, store, site="blocks.0", batch_size=64)
    assert res.steps == 5 and sae.d_sae == 4 * D  # one SAE in, one SAE out
    rows = torch.cat(seen)
    assert rows.numel() > 5 * 50 and bool((store.positions[rows] >= 0).all())
    seen.clear()
    train_saes(build_sae("topk", d_in=D, d_sae=4 * D, k=4), cfg, store, site="blocks.0", batch_size=64,
               exclude_special=False)
    rows = torch.cat(seen)
    assert rows.numel() == 5 * 64 and bool((store.positions[rows] < 0).any())  # asked for: BOS rows included


def test_store_config_checks_integers_and_shows_progress_by_default():
    with pytest.raises(ConfigError, match=r"StoreSAEConfig\.expansion must be an integer, got float 2.5"):
        StoreSAEConfig(expansion=2.5)
    with pytest.raises(ConfigError, match=r"StoreSAEConfig\.k must be an integer"):
        StoreSAEConfig(k=4.0)
    assert StoreSAEConfig().progress


def test_cli_sae_train_writes_a_report_section_with_a_feature_browser(tmp_path):
    """`assay sae train` narrates its evaluation, and its folder joins `assay report` with a feature
    browser over the held-out windows whose top contexts match a brute-force argsort."""
    from assay.report import read_section

    _store(tmp_path / "s")
    out = tmp_path / "runs" / "sae"
    args = ["sae", "train", "--store", str(tmp_path / "s"), "--site", "blocks.0", "--out", str(out),
            "--expansion", "4", "--k", "4", "--steps", "12", "--batch-size", "64", "--warmup-steps", "2",
            "--holdout-windows", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("held-out metrics:") and s.endswith("..."))
    assert lines[start + 1].startswith("held-out metrics: FVU") and lines[start + 1].endswith(" s)")
    assert "sae " in res.output and "12/12" in res.output  # the progress bar, on by default
    sec = read_section(out)
    assert "blocks.0" in sec.title and sec.tables[0].rows and sec.features["n_latents"] == 4 * D
    # the browser's top contexts are the held-out rows with the largest codes (BOS left out)
    store = ActivationStore.open(tmp_path / "s")
    sae = load_sae(out)
    cut = (N_WIN - 8) * T
    rows = cut + (store.positions[cut:] >= 0).nonzero().squeeze(1)
    with torch.no_grad():
        z = sae.encode(store.read_rows("blocks.0", rows))
    checked = 0
    for lat in sec.features["latents"]:
        col = z[:, lat["id"]]
        want = sorted(col[col > 0].tolist(), reverse=True)[:6]
        assert [c["acts"][c["focus"]] for c in lat["contexts"]] == pytest.approx(want, abs=1e-4)
        for c in lat["contexts"]:
            r = int(rows[c["row"]])
            assert c["tokens"][c["focus"]] == str(store.tokens[r])  # ids: the tiny model has no tokenizer
        checked += bool(want)
    assert checked > 0
    report = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert sec.title in (tmp_path / "r.html").read_text() and "Feature browser" in (tmp_path / "r.html").read_text()
