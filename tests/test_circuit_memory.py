"""The graph memory model (assay.circuits.graph.memory) against the tensors a graph really holds (measured from
torch's allocator events: deterministic), and ``assay circuit``'s refusal of a prompt longer than the budget fits."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from assay.bench.circuit_real import CircuitSettings, _check_length, llama_sites, prompt_memory
from assay.circuits.graph.memory import HEAP, graph_memory, max_tokens
from assay.circuits.learned import transcoder_basis
from assay.dictionaries.registry import build_sae
from tests.test_circuits_llama import KW, D, tiny_llama

_SPEC = importlib.util.spec_from_file_location(
    "bench_circuit_memory", Path(__file__).resolve().parents[1] / "benchmarks" / "circuit_memory.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)  # its live_peak (allocator events) and graph_stage (what assay circuit runs)


@pytest.mark.parametrize("linearised", ["frozen", "linearised"])
@pytest.mark.parametrize(("n_tokens", "batch", "layers"), [(8, 16, (1,)), (24, 16, (1,)), (48, 4, (0, 1)), (48, 32, (1,))])
def test_the_estimate_bounds_the_tensors_a_graph_holds_and_is_not_loose(n_tokens, batch, layers, linearised):
    """Graphs with frozen norms and attention (circuit-tracer's) and with both linearised (which hold more)."""
    model = tiny_llama()
    s = CircuitSettings(layers=layers, d_sae=64, k=4, graph_batch=batch, max_n_logits=3, norms=linearised,
                        attention=linearised)
    bases = [transcoder_basis(build_sae("topk_transcoder", d_in=D, d_out=D, d_sae=s.d_sae, k=s.k, seed=i), layer=i,
                              input_site=llama_sites(i)[0], output_site=llama_sites(i)[1]).to(torch.float64)
             for i in layers]  # in the model's dtype, as assay circuit's (else the graph holds a cast copy)
    prompt = torch.randint(0, 50, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens))
    with torch.no_grad():
        model(prompt[None])  # first-call allocations (rotary caches) are the model's, not the graph's
    measured = bench.live_peak(lambda: bench.graph_stage(model, prompt, bases, s, **KW))
    modelled = prompt_memory(model, n_tokens, s).need_gb * 2**30 / HEAP  # the live part of the estimate
    assert measured <= modelled <= 3 * measured, (measured, modelled)


def test_the_live_model_is_attribution_or_pruning_whichever_is_larger():
    kw = dict(n_features=100, n_bases=2, n_layers=2, d_model=8, n_heads=2, vocab=10, dict_features=16, batch=4,
              n_logits=1, element_size=4)
    small = graph_memory(n_tokens=4, **kw)
    n = 100 + 2 * 4 + 4 + 1
    assert small.live == pytest.approx(4 * 4.5 * n * n)  # few tokens, many features: pruning's dense matrices
    assert small.resident == pytest.approx(HEAP * small.live)
    wide = graph_memory(n_tokens=4, **{**kw, "batch": 10**4, "d_model": 10**4})  # batched run dominates
    assert wide.live > 4 * 4.5 * n * n
    assert graph_memory(n_tokens=5, **kw).live > small.live


def test_max_tokens_is_the_longest_length_within_the_budget():
    assert max_tokens(lambda t: t * t, 99) == 9
    assert max_tokens(lambda t: t * t, 100) == 10
    assert max_tokens(lambda t: 5 + t, 4) == 0


def test_a_prompt_one_token_longer_than_fits_is_refused_naming_the_length_that_fits():
    model = tiny_llama()
    s = CircuitSettings(layers=(1,), d_sae=32, k=4, memory_gb=0.002)
    fit = prompt_memory(model, 1, s).max_tokens
    assert fit > 1
    assert prompt_memory(model, fit, s).need_gb <= s.memory_gb < prompt_memory(model, fit + 1, s).need_gb
    assert _check_length(model, fit, s).max_tokens == fit  # the longest prompt that fits passes
    with pytest.raises(ValueError, match=rf"fits prompts up to {fit} tokens") as err:
        _check_length(model, fit + 1, s)
    need = float(re.search(r"needs about ([\d.]+) GB", str(err.value)).group(1))
    assert need == pytest.approx(prompt_memory(model, fit + 1, s).need_gb, abs=0.05)
