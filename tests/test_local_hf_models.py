"""Any local Hugging Face model folder: tiny random Llama, GPT-NeoX, Gemma and BERT models saved with
safetensors load by path in their saved dtype, resolve their block sites without a per-architecture
table, and cache through the store exactly what a direct forward pass with a hook on the original
model gives. Pickle weights are refused and never unpickled."""

import pickle

import pytest
import torch

from assay.hooks import capture
from assay.models import load
from assay.models.local_hf import UnsafeWeightsError
from assay.store import ActivationStore, write_store

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64,
            max_position_embeddings=64)


def _tiny(kind):
    """(model, expected block sites) for a tiny randomly initialised model of ``kind``."""
    if kind == "llama":
        cfg = transformers.LlamaConfig(**TINY, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(cfg), "model.layers"
    if kind == "gpt-neox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**TINY)), "gpt_neox.layers"
    if kind == "gemma":
        cfg = transformers.GemmaConfig(**TINY, num_key_value_heads=1, head_dim=8)
        return transformers.GemmaForCausalLM(cfg), "model.layers"
    return transformers.BertModel(transformers.BertConfig(**TINY)), "encoder.layer"


class Exploding:
    """Unpickling this object writes a marker file: the test that pickles are never loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind, dtype", [("llama", torch.bfloat16), ("gpt-neox", torch.float32),
                                         ("gemma", torch.float32), ("bert", torch.float32)])
def test_local_folder_loads_and_caches_like_a_direct_forward(tmp_path, kind, dtype):
    model, blocks = _tiny(kind)
    model = model.to(dtype).eval()
    folder = tmp_path / kind
    model.save_pretrained(folder, safe_serialization=True)
    loaded = load(folder)
    assert loaded.layer_sites == (f"{blocks}.0", f"{blocks}.1")
    assert loaded.tokenizer is None and loaded.name == str(folder)
    assert next(loaded.model.parameters()).dtype == dtype  # the saved dtype, not float32
    assert not loaded.model.training
    saved = loaded.model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    tokens = torch.randint(1, 64, (3, 6), generator=torch.Generator().manual_seed(0))
    write_store(tmp_path / "store", loaded.model, loaded.layer_sites, tokens, batch_size=3, shard_rows=7,
                dtype="float32", model_name=str(folder))
    store = ActivationStore.open(tmp_path / "store")
    with torch.no_grad(), capture(model, loaded.layer_sites) as cap:
        model(tokens)
    # the loaded model may pick another attention kernel (SDPA vs eager): one bfloat16 ulp apart at most
    tol = dict(atol=1e-3, rtol=8e-3) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-4)
    for site in loaded.layer_sites:
        want = cap[site].reshape(-1, 32).float()
        torch.testing.assert_close(store.read(site, 0, store.n_rows), want, **tol)
    assert torch.equal(store.tokens.all(), tokens.reshape(-1))
    store.close()


def test_asked_dtype_overrides_the_saved_one(tmp_path):
    model, _ = _tiny("llama")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    assert next(load(tmp_path / "m", dtype=torch.bfloat16).model.parameters()).dtype == torch.bfloat16


def test_pickles_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    model, _ = _tiny("llama")
    folder = tmp_path / "m"
    model.config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploding(marker)))
    with pytest.raises(UnsafeWeightsError, match=r"no safetensors weights.*pytorch_model\.bin.*arbitrary code"):
        load(folder)
    with pytest.raises(UnsafeWeightsError, match="pickle file; assay never loads pickles"):
        load(folder / "pytorch_model.bin")
    model.save_pretrained(folder, safe_serialization=True)  # now both: only the safetensors are read
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Exploding(marker)))
    assert load(folder).layer_sites == ("model.layers.0", "model.layers.1")
    assert not marker.exists()


def test_bad_folders_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        load(tmp_path / "empty")
    _tiny("bert")[0].config.save_pretrained(tmp_path / "cfg_only")
    with pytest.raises(UnsafeWeightsError, match=r"no safetensors weights \(model.safetensors"):
        load(tmp_path / "cfg_only")


def test_assay_cache_takes_a_model_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from typer.testing import CliRunner

    from assay.cli import app

    words = ["[UNK]", "[BOS]", "the", "a", "of", "and", "to", "in", "is", "that", "it", "for", "was", "on", "with"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model, _ = _tiny("llama")
    model.eval().save_pretrained(tmp_path / "m", safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "m")
    out = tmp_path / "store"
    res = CliRunner().invoke(app, ["cache", "--model", str(tmp_path / "m"), "--sites", "model.layers.1", "--n-tokens",
                                   "64", "--context-length", "16", "--batch-size", "2", "--shard-rows", "32",
                                   "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    store = ActivationStore.open(out)
    tokens = store.tokens.all().reshape(-1, 16)
    assert store.config["model"] == str(tmp_path / "m") and (tokens[:, 0] == 1).all()  # each window starts with BOS
    assert (tokens[:, 1:] > 1).any()  # and holds words the tokenizer knows
    with torch.no_grad(), capture(model, ["model.layers.1"]) as cap:
        model(tokens)
    torch.testing.assert_close(store.read("model.layers.1", 0, 64), cap["model.layers.1"].reshape(-1, 32),
                               atol=1e-5, rtol=1e-4)
    store.close()
