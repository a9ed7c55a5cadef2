"""Attribution graphs on a Llama-style model (RMSNorm, rotary attention, grouped KV heads): the local replacement
model's edges against autograd Jacobians of a hand-written linearised forward pass, partial transcoder sets."""

from __future__ import annotations

import pytest
import torch

from assay.circuits.graph import FeatureBasis, GraphConfig, attribute, graph_scores, relu
from assay.circuits.graph.replacement import LocalReplacement

T, D, N_LAYERS, HEADS, KV_HEADS = 6, 32, 2, 4, 2


def tiny_llama(seed: int = 0):
    """A random float64 LlamaForCausalLM whose MLPs are ReLU MLPs (up_proj = constant 1 through its bias), so
    that a transcoder with the gate and down weights is exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                      hidden_act="relu", mlp_bias=True, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.zero_()
            layer.mlp.up_proj.bias.fill_(1.0)
    return model


def exact_transcoder(model, i: int) -> FeatureBasis:
    """The layer-i MLP as a transcoder (features = its ReLU neurons): error 0."""
    mlp = model.model.layers[i].mlp
    return FeatureBasis(name=f"tc{i}", input_site=f"model.layers.{i}.post_attention_layernorm",
                        output_site=f"model.layers.{i}.mlp", W_enc=mlp.gate_proj.weight.T.detach(),
                        b_enc=mlp.gate_proj.bias.detach(), W_dec=mlp.down_proj.weight.T.detach(),
                        b_dec=mlp.down_proj.bias.detach(), activation=relu)


KW = dict(embed_site="model.embed_tokens", final_site="model.norm")


def hand_forward(model, tokens, exact: list[int], skips: dict[int, torch.Tensor] | None = None):
    """Clean run by hand, with the attention patterns HF reports (eager, output_attentions); returns the logits and
    the linearised forward ``f(emb, acts, errs) -> (pres, logits)`` with norms and patterns frozen at the clean run
    (``errs`` by layer; a transcoded layer i adds ``h skips[i]`` of its input h and its error ``errs[i]`` if given)."""
    skips = skips or {}
    model.set_attn_implementation("eager")
    out = model(tokens[None], output_attentions=True)
    model.set_attn_implementation("sdpa")
    patterns = [a[0] for a in out.attentions]  # [heads, T, T]
    layers, hd = model.model.layers, D // HEADS

    def attn(i, h):
        a = layers[i].self_attn
        v = (h @ a.v_proj.weight.T).view(T, KV_HEADS, hd).transpose(0, 1).repeat_interleave(HEADS // KV_HEADS, 0)
        return (patterns[i] @ v).transpose(0, 1).reshape(T, D) @ a.o_proj.weight.T

    def mlp(i, h):
        m = layers[i].mlp
        return (h @ m.gate_proj.weight.T + m.gate_proj.bias).clamp(min=0) @ m.down_proj.weight.T + m.down_proj.bias

    x, rs, mlp_out = model.model.embed_tokens.weight[tokens], [], []
    emb = x
    for i in range(N_LAYERS):
        rs.append((x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
        x = x + attn(i, layers[i].input_layernorm.weight * x / rs[-1])
        rs.append((x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
        mlp_out.append(mlp(i, layers[i].post_attention_layernorm.weight * x / rs[-1]))
        x = x + mlp_out[-1]
    rs.append((x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
    logits = (model.model.norm.weight * x / rs[-1]) @ model.lm_head.weight.T

    def linear(emb, acts, errs):
        x, pres = emb, []
        for i in range(N_LAYERS):
            x = x + attn(i, layers[i].input_layernorm.weight * x / rs[2 * i])
            h = layers[i].post_attention_layernorm.weight * x / rs[2 * i + 1]
            if i in exact:
                m = layers[i].mlp
                pres.append(h @ m.gate_proj.weight.T + m.gate_proj.bias)
                x = x + acts[exact.index(i)] @ m.down_proj.weight.T + m.down_proj.bias
                if i in skips:
                    x = x + h @ skips[i] + errs[i]
            else:
                x = x + errs[i]
        return pres, (model.model.norm.weight * x / rs[-1]) @ model.lm_head.weight.T

    return emb.detach(), mlp_out, logits.detach(), linear


@pytest.mark.parametrize("exact", [[0, 1], [1], []])
def test_llama_edges_equal_jacobians_of_a_hand_written_linearised_forward(exact):
    model = tiny_llama()
    tokens = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb, mlp_out, logits, linear = hand_forward(model, tokens, exact)
        assert torch.allclose(logits, model(tokens[None]).logits[0], atol=1e-5)  # the hand-written forward is the model
    bases = [exact_transcoder(model, i) for i in exact]
    graph = attribute(model, tokens, bases, GraphConfig(batch_size=7, max_n_logits=3, desired_logit_prob=1.0),
                      unembed=model.lm_head.weight, **KW)
    absent = [i for i in range(N_LAYERS) if i not in exact]
    assert graph.basis_names == (*(f"tc{i}" for i in exact), *(f"model.layers.{i}.mlp" for i in absent))
    rep = LocalReplacement(model, tokens, bases, unembed=model.lm_head.weight, **KW)
    acts = [a.detach() for a in rep.acts[:len(exact)]]
    errs = {i: rep.errors[len(exact) + j] for j, i in enumerate(absent)}
    for i in absent:  # an MLP without a transcoder is its output as one error node per position (model: float32 norms)
        assert torch.allclose(errs[i], mlp_out[i], atol=1e-5)
    for j in range(len(exact)):
        assert rep.errors[j].abs().max() < 1e-12  # the exact transcoders' errors

    feats, sl = graph.features.tolist(), graph.slices()
    targets = [("logit", int(v)) for v in graph.logit_tokens] + [("feature", f) for f in feats[:20]]
    rows = [sl[3].start + k for k in range(graph.n_logits)] + list(range(min(20, len(feats))))
    for (kind, what), r in zip(targets, rows, strict=True):
        def target(emb_, *rest, kind=kind, what=what):
            pres, lg = linear(emb_, list(rest[:len(exact)]), dict(zip(absent, rest[len(exact):], strict=True)))
            if kind == "logit":  # the logit minus the mean logit
                return lg[-1, what] - lg[-1].mean()
            j, p, i = what
            return pres[j][p, i]

        src = (emb, *acts, *(errs[i] for i in absent))
        jac = torch.autograd.functional.jacobian(target, src)
        expected = torch.zeros(graph.adjacency.shape[1], dtype=torch.float64)
        expected[sl[2]] = (jac[0] * emb).sum(-1)
        for k, (j, p, i) in enumerate(feats):
            expected[k] = jac[1 + j][p, i] * acts[j][p, i]
        for j, i in enumerate(absent):
            e0 = sl[1].start + (len(exact) + j) * T
            expected[e0:e0 + T] = (jac[1 + len(exact) + j] * errs[i]).sum(-1)
        assert torch.allclose(graph.adjacency[r], expected, atol=1e-6), (kind, what)
    # the edges sum to each logit of the model itself (the replacement reproduces the clean run)
    lg = sl[3]
    summed = graph.adjacency[lg].sum(1) + graph.constants[lg] + graph.unexplored[lg]
    demeaned = logits[-1, graph.logit_tokens] - logits[-1].mean()
    assert torch.allclose(summed, demeaned, atol=1e-5)
    assert torch.allclose(graph.values[lg], demeaned, atol=1e-5)
    if not absent:
        scores = graph_scores(graph.adjacency, graph.logit_weights(), _mask(graph, 1), _mask(graph, 2))
        assert scores.replacement == pytest.approx(1.0, abs=1e-6)
        assert scores.completeness == pytest.approx(1.0, abs=1e-6)


def _mask(graph, k):
    m = torch.zeros(graph.adjacency.shape[0], dtype=torch.bool)
    m[graph.slices()[k]] = True
    return m


def test_skip_transcoder_edges_include_the_linear_skip_path():
    """A skip-transcoder's ``x W_skip`` is a linear path in the replacement model: edges equal the Jacobians of a
    hand-written forward in which each transcoded MLP adds h W_skip of its (live) input h, and its error node holds
    what decoder + skip miss; rows still sum to the model's logits."""
    import dataclasses

    model = tiny_llama()
    tokens = torch.randint(0, 50, (T,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(3)
    skips = {i: 0.2 * torch.randn(D, D, generator=g, dtype=torch.float64) for i in range(N_LAYERS)}
    bases = [dataclasses.replace(exact_transcoder(model, i), W_skip=skips[i]) for i in range(N_LAYERS)]
    with torch.no_grad():
        emb, _, logits, linear = hand_forward(model, tokens, list(range(N_LAYERS)), skips)
    graph = attribute(model, tokens, bases, GraphConfig(batch_size=5, max_n_logits=3, desired_logit_prob=1.0),
                      unembed=model.lm_head.weight, **KW)
    rep = LocalReplacement(model, tokens, bases, unembed=model.lm_head.weight, **KW)
    acts, errs = [a.detach() for a in rep.acts], {i: rep.errors[i] for i in range(N_LAYERS)}
    assert all(e.abs().max() > 1e-3 for e in errs.values())  # the errors hold minus the skip term here
    feats, sl = graph.features.tolist(), graph.slices()
    targets = [("logit", int(v)) for v in graph.logit_tokens] + [("feature", f) for f in feats[:12]]
    rows = [sl[3].start + k for k in range(graph.n_logits)] + list(range(min(12, len(feats))))
    for (kind, what), r in zip(targets, rows, strict=True):
        def target(emb_, *rest, kind=kind, what=what):
            pres, lg = linear(emb_, list(rest[:N_LAYERS]), dict(enumerate(rest[N_LAYERS:])))
            if kind == "logit":
                return lg[-1, what] - lg[-1].mean()
            j, p, i = what
            return pres[j][p, i]

        jac = torch.autograd.functional.jacobian(target, (emb, *acts, *errs.values()))
        expected = torch.zeros(graph.adjacency.shape[1], dtype=torch.float64)
        expected[sl[2]] = (jac[0] * emb).sum(-1)
        for k, (j, p, i) in enumerate(feats):
            expected[k] = jac[1 + j][p, i] * acts[j][p, i]
        for i in range(N_LAYERS):
            expected[sl[1].start + i * T:sl[1].start + (i + 1) * T] = (jac[1 + N_LAYERS + i] * errs[i]).sum(-1)
        assert torch.allclose(graph.adjacency[r], expected, atol=1e-6), (kind, what)
    lg = sl[3]
    summed = graph.adjacency[lg].sum(1) + graph.constants[lg] + graph.unexplored[lg]
    torch.testing.assert_close(summed, logits[-1, graph.logit_tokens] - logits[-1].mean(), rtol=0, atol=1e-5)
    # dropping the skip path from the graph (same errors) changes the edges: the test can fail
    plain = attribute(model, tokens, [exact_transcoder(model, i) for i in range(N_LAYERS)],
                      GraphConfig(batch_size=5, max_n_logits=3, desired_logit_prob=1.0),
                      unembed=model.lm_head.weight, **KW)
    assert not torch.allclose(plain.adjacency[lg][:, :graph.n_features], graph.adjacency[lg][:, :graph.n_features],
                              atol=1e-3)


def test_a_skip_term_needs_matching_shapes_and_a_separate_input_site():
    base = exact_transcoder(tiny_llama(), 0)
    import dataclasses

    with pytest.raises(ValueError, match="W_skip"):
        dataclasses.replace(base, W_skip=torch.zeros(D, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="same site"):
        dataclasses.replace(base, input_site=base.output_site, W_skip=torch.zeros(D, D, dtype=torch.float64))
