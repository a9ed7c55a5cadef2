"""Attribution graphs against the peer: circuit-tracer (TransformerLens path) on a tiny random Llama, with JumpReLU
transcoders written by assay in circuit-tracer's own file format and loaded by circuit-tracer's loader. The unpruned
adjacency must agree entry for entry (the issue's peer check, at a size that runs in seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from peer_import import peer

from assay.circuits.graph import GraphConfig, attribute
from assay.circuits.learned import transcoder_basis
from assay.dictionaries.circuit_tracer_format import (
    CONFIG_FILE,
    circuit_tracer_replacement,
    save_circuit_tracer,
)
from assay.dictionaries.registry import build_sae

D, N_LAYERS, T = 32, 3, 7


def tiny_llama_folder(path):
    """A random float32 Llama (SiLU-gated MLPs, grouped KV heads, rope_theta 100,000 as SmolLM2) saved with
    safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=48, hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=100000.0,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "norm" in name else 0.2
            p.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(path, safe_serialization=True)
    return model


def word_tokenizer(folder):
    """A word-level tokenizer over the tiny vocabulary with ``<s>`` (id 0) as BOS, saved into ``folder`` and read
    back (circuit-tracer needs a tokenizer, and TransformerLens re-reads it from its folder)."""
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<s>": 0, **{f"w{i}": i for i in range(1, 48)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<s>")), bos_token="<s>")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def jumprelu_transcoders(seed: int = 0) -> dict[int, object]:
    """A JumpReLU transcoder per layer with random weights and thresholds that leave about a third of the features on."""
    out = {}
    for i in range(N_LAYERS):
        tc = build_sae("jumprelu_transcoder", d_in=D, d_out=D, d_sae=48, seed=seed + i)
        g = torch.Generator().manual_seed(100 + 10 * seed + i)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(D, 48, generator=g) / D**0.5)
            tc.b_enc.copy_(0.1 * torch.randn(48, generator=g))
            tc.W_dec.copy_(0.3 * torch.randn(48, D, generator=g))
            tc.b_dec.copy_(0.1 * torch.randn(D, generator=g))
            tc.set_threshold(torch.rand(48, generator=g) * 0.4 + 0.05)
        out[i] = tc
    return out


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # raised inside circuit-tracer's backward
def test_unpruned_adjacency_equals_circuit_tracer(tmp_path):
    peer("circuit_tracer")
    model = tiny_llama_folder(tmp_path / "llama")
    tcs = jumprelu_transcoders()
    folder = save_circuit_tracer(tcs, tmp_path / "transcoders")
    ids = torch.randint(1, 48, (T,), generator=torch.Generator().manual_seed(1))
    ids[0] = 0  # a "BOS": circuit-tracer prepends one unless the prompt starts with a special token

    bases = [transcoder_basis(tcs[i], layer=i, input_site=f"model.layers.{i}.post_attention_layernorm",
                              output_site=f"model.layers.{i}.mlp") for i in range(N_LAYERS)]
    ours = attribute(model, ids, bases, GraphConfig(batch_size=16, max_n_logits=3), embed_site="model.embed_tokens",
                     final_site="model.norm", unembed=model.lm_head.weight)

    from circuit_tracer import attribute as ct_attribute

    replacement = circuit_tracer_replacement(tmp_path / "llama", folder, n_ctx=16, tokenizer=word_tokenizer(tmp_path / "llama"))
    replacement.zero_positions = slice(0, 0)  # circuit-tracer drops position-0 features by default; assay keeps them
    with torch.no_grad():
        assert torch.allclose(replacement(ids[None])[0], model(ids[None]).logits[0], atol=1e-4)
    theirs = ct_attribute(ids, replacement, attribution_targets=ours.logit_tokens, batch_size=16)

    assert ours.n_features > 20  # enough features that a misplaced row or column shows
    key = {tuple(r): k for k, r in enumerate(theirs.active_features.tolist())}
    assert sorted(key) == sorted(tuple(r) for r in ours.features.tolist())  # (layer, position, feature) nodes
    order = torch.tensor([key[tuple(r)] for r in ours.features.tolist()]
                         + list(range(ours.n_features, theirs.adjacency_matrix.shape[0])))
    a, b = ours.adjacency.float(), theirs.adjacency_matrix.float()[order][:, order]
    assert a.shape == b.shape
    assert float(a.abs().max()) > 0.1
    torch.testing.assert_close(a, b, atol=2e-5 * float(a.abs().max()), rtol=1e-4)


def test_format_refuses_what_circuit_tracer_cannot_read(tmp_path):
    tcs = jumprelu_transcoders()
    with pytest.raises(ValueError, match="every layer 0"):
        save_circuit_tracer({0: tcs[0], 2: tcs[2]}, tmp_path / "gap")
    topk = build_sae("topk_transcoder", d_in=D, d_out=D, d_sae=48, k=4, seed=0)
    with pytest.raises(ValueError, match="jumprelu_transcoder"):
        save_circuit_tracer({0: topk}, tmp_path / "topk")
    with torch.no_grad():
        tcs[1].set_threshold(torch.zeros(48))
    with pytest.raises(ValueError, match="positive"):
        save_circuit_tracer(tcs, tmp_path / "zero")
    assert not (tmp_path / "gap").exists() and not (tmp_path / "topk").exists()


def test_format_files_and_atomic_replace(tmp_path):
    from safetensors.torch import load_file

    tcs = jumprelu_transcoders()
    folder = save_circuit_tracer(tcs, tmp_path / "set")
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["model_kind"] == "transcoder_set" and len(config["transcoders"]) == N_LAYERS
    w = load_file(config["transcoders"][1])
    torch.testing.assert_close(w["W_enc"], tcs[1].W_enc.detach().T)
    torch.testing.assert_close(w["activation_function.threshold"], tcs[1].threshold.detach())
    save_circuit_tracer(jumprelu_transcoders(seed=5), folder)  # replaces the old set in place
    assert not torch.equal(load_file(config["transcoders"][0])["W_dec"], tcs[0].W_dec.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
