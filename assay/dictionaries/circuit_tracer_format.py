"""Per-layer transcoders in circuit-tracer's on-disk format, and circuit-tracer's replacement model of a local
Llama-style Hugging Face folder, so its attribution graphs can be built from transcoders trained by assay.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models"; the format is that of
the open-source ``circuit-tracer`` package (Hanna, Piotrowski, Lindsey & Ameisen 2025; read by its
``load_transcoders``). A transcoder set is a folder with

- ``layer_{i}.safetensors`` per MLP layer i = 0 … L−1 (every layer: circuit-tracer refuses gaps):
  ``W_enc`` [d_sae, d_in] (assay's W_enc transposed), ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_out],
  ``b_dec`` [d_out], ``activation_function.threshold`` [d_sae] (JumpReLU θ) and ``W_skip`` [d_out, d_in]
  for a skip-transcoder;
- ``config.yaml``: ``model_kind: transcoder_set``, the hook names the features read and write
  (TransformerLens names; for circuit-tracer's wrapped MLP ``mlp.hook_in`` is the post-attention RMSNorm's
  output and ``mlp.hook_out`` the MLP's output), a ``scan`` name and the layer files in order. It is written
  as JSON, which YAML parsers read.

circuit-tracer loads ReLU and JumpReLU transcoders. assay's ``jumprelu_transcoder`` maps exactly:
circuit-tracer computes x·1[x > θ], assay ReLU then the mask x > θ, which agree for θ > 0 (assay's θ is
positive by construction). assay's TopK transcoders have no circuit-tracer file format and are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from assay.artifact import staged_folder
from assay.dictionaries.base import SAE

__all__ = ["save_circuit_tracer", "CONFIG_FILE", "circuit_tracer_replacement"]

CONFIG_FILE = "config.yaml"


def save_circuit_tracer(transcoders: Mapping[int, SAE], path: str | Path, *, feature_input_hook: str = "mlp.hook_in",
                        feature_output_hook: str = "mlp.hook_out", scan: str = "assay") -> Path:
    """Write ``transcoders`` (layer → assay ``jumprelu_transcoder``, layers 0 … L−1) as a circuit-tracer transcoder
    set in folder ``path`` (replaced atomically: written beside it, then renamed) and return the folder."""
    path = Path(path)
    layers = sorted(transcoders)
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"circuit-tracer needs a transcoder on every layer 0 … L−1, got layers {layers}; train the "
                         "missing ones (circuit-tracer has no error-node-only layers in a transcoder set)")
    for i in layers:
        arch = transcoders[i].architecture
        if arch != "jumprelu_transcoder":
            raise ValueError(f"layer {i}: circuit-tracer's file format holds ReLU and JumpReLU transcoders; assay's "
                             f"{arch!r} has none (train a jumprelu_transcoder, or build graphs with assay directly)")
        if not bool((transcoders[i].threshold > 0).all()):  # type: ignore[operator]
            raise ValueError(f"layer {i}: a JumpReLU threshold ≤ 0 makes circuit-tracer's x·1[x > θ] differ from "
                             "assay's ReLU-then-mask; every θ must be positive")
    with staged_folder(path) as tmp:
        files = []
        for i in layers:
            tc = transcoders[i]
            weights = {"W_enc": tc.W_enc.detach().T, "b_enc": tc.b_enc.detach(), "W_dec": tc.W_dec.detach(),
                       "b_dec": tc.b_dec.detach(), "activation_function.threshold": tc.threshold.detach()}  # type: ignore[operator]
            if tc.cfg.skip:  # type: ignore[attr-defined]
                weights["W_skip"] = tc.W_skip.detach()
            name = f"layer_{i}.safetensors"
            save_file({k: v.float().contiguous().cpu() for k, v in weights.items()}, str(tmp / name))
            files.append(str(path.resolve() / name))
        config = {"model_kind": "transcoder_set", "scan": scan, "feature_input_hook": feature_input_hook,
                  "feature_output_hook": feature_output_hook, "transcoders": files}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return path


def circuit_tracer_replacement(model_dir: str | Path, transcoder_dir: str | Path, *, n_ctx: int = 256,
                               dtype: torch.dtype = torch.float32, tokenizer=None):  # noqa: ANN001, ANN201
    """circuit-tracer's TransformerLens replacement model of the Llama-style Hugging Face folder ``model_dir`` with the
    transcoder set in ``transcoder_dir`` (written by :func:`save_circuit_tracer`), on the CPU.

    TransformerLens's ``from_pretrained`` only takes models from its own list (SmolLM2 is not on it), and its
    config reader mishandles local folders (a path containing "llama" skips reading the config; the generic Llama
    branch leaves ``rotary_base`` at 10,000 where SmolLM2 uses 100,000). So the config is built here from the
    folder's, field for field as TransformerLens maps a Llama, with ``rotary_base`` = ``rope_theta``; the weights
    are converted with TransformerLens's ``convert_llama_weights`` and the transcoders attached afterwards. Needs
    ``circuit-tracer`` (with TransformerLens) installed. circuit-tracer zeroes every feature at position 0
    (``zero_positions``); set it to ``slice(0, 0)`` on the returned model to keep them, as assay's graphs do."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.utils.hf_utils import load_transcoders
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoConfig

    from assay.models.local_hf import load_local

    model_dir = Path(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir)
    if "LlamaForCausalLM" not in (hf_config.architectures or []):
        raise ValueError(f"{model_dir} holds {hf_config.architectures}; this loader converts Llama-style models only")
    config = json.loads((Path(transcoder_dir) / CONFIG_FILE).read_text())
    h = hf_config
    d_head = getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads
    cfg = HookedTransformerConfig(
        d_model=h.hidden_size, d_head=d_head, n_heads=h.num_attention_heads, d_mlp=h.intermediate_size,
        n_layers=h.num_hidden_layers, n_ctx=n_ctx, eps=h.rms_norm_eps, d_vocab=h.vocab_size, act_fn=h.hidden_act,
        n_key_value_heads=h.num_key_value_heads if h.num_key_value_heads != h.num_attention_heads else None,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=d_head,
        rotary_base=h.rope_theta, final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        device="cpu", dtype=dtype)
    hf = load_local(model_dir, dtype=dtype, device="cpu", attn_implementation=None)[0]  # safetensors only: pickled weights are refused
    model = TransformerLensReplacementModel(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    model._configure_replacement_model(load_transcoders(config, device=torch.device("cpu"), dtype=dtype,
                                                        lazy_encoder=False, lazy_decoder=False))
    return model
