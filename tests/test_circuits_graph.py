"""Attribution graphs: circuit-tracer's hand-computed pruning/score values (spec circuits.md §3.5–3.6),
a closed-form edge (§3.3), and exact-feature graphs on compiled models (§4.3 A3, A5)."""

import dataclasses
import json
import math

import pytest
import torch

from assay.circuits.compile import PROGRAMS, compile_program
from assay.circuits.compile.features import edge_recovery, exact_bases
from assay.circuits.graph import (
    FeatureBasis,
    GraphConfig,
    LocalReplacement,
    attribute,
    constrained_effects,
    graph_json,
    graph_scores,
    influence,
    influential_edge_recall,
    load_graph,
    normalize_matrix,
    prune,
    read_graph_json,
    save_graph,
    share_threshold,
    subgraph_values,
    write_graph_json,
)
from assay.config import ConfigError
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.base import make_generator


def small_graph(extra_error_edge=False):
    """circuit-tracer's test_small_graph: features 0–4, errors 5–8, tokens 9–10, logit 11."""
    a = torch.zeros(12, 12, dtype=torch.float64)
    edges = [(11, 1), (11, 3), (11, 6), (11, 8), (3, 0), (3, 1), (3, 6), (1, 9), (1, 10), (0, 9)]
    if extra_error_edge:
        edges.append((11, 5))
    for t, s in edges:
        a[t, s] = 10.0
    w = torch.zeros(12, dtype=torch.float64)
    w[11] = 1.0
    return a, w


def masks(idx):
    m = torch.zeros(12, dtype=torch.bool)
    m[list(idx)] = True
    return m


def test_influence_and_pruning_match_the_hand_computed_small_graph():
    a, w = small_graph()
    inf = influence(normalize_matrix(a), w)
    expect = torch.tensor([1 / 12, 1 / 3, 0, 1 / 4, 0, 0, 1 / 3, 0, 1 / 4, 1 / 4, 1 / 6, 0], dtype=torch.float64)
    torch.testing.assert_close(inf, expect)
    out = prune(a, w, masks(range(9, 12)), features=masks(range(5)))
    assert set(out.node_mask.nonzero()[:, 0].tolist()) == {1, 3, 6, 8, 9, 10, 11}
    kept = {tuple(e) for e in out.edge_mask.nonzero().tolist()}
    assert kept == {(1, 9), (1, 10), (3, 1), (3, 6), (11, 1), (11, 3), (11, 6), (11, 8)}
    s = out.edge_scores
    assert s[11, 1] == pytest.approx(1 / 4) and s[3, 1] == pytest.approx(1 / 8) and s[1, 9] == pytest.approx(3 / 16)


def test_graph_scores_match_the_hand_computed_values():
    for extra, rep, comp in ((False, 5 / 12, 25 / 32), (True, 1 / 3, 14 / 19)):
        a, w = small_graph(extra)
        scores = graph_scores(a, w, masks(range(5, 9)), masks((9, 10)))
        assert scores.replacement == pytest.approx(rep, abs=1e-9)
        assert scores.completeness == pytest.approx(comp, abs=1e-9)


def test_share_threshold_equals_the_sort_based_rule_without_sorting_everything():
    g = make_generator(0)
    for trial in range(20):
        x = torch.randint(0, 6, (40, 30), generator=g).double() * torch.rand(40, 30, generator=g, dtype=torch.float64)
        if trial % 2:
            x = x.round()  # many ties
        share = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        srt = x.flatten().sort(descending=True).values
        idx = torch.searchsorted(srt.cumsum(0) / srt.sum(), torch.tensor([share], dtype=torch.float64))
        assert share_threshold(x, share, exact_band=8) == float(srt[idx.clamp(max=len(srt) - 1)])


def test_a_hand_computed_edge_through_a_frozen_pattern():
    """Spec §3.3: pattern P[1, 0] = 0.25, W_OV = I, source at position 0 with value 2·(1, 0), target at
    position 1 reading (1, 0) → A = 0.5 (and the other position's embedding (0, 1) contributes 0)."""
    cfg = TransformerConfig(vocab_size=2, n_layers=1, n_heads=1, d_model=2, d_mlp=1, context=2, norm="none",
                            act="relu", attn_impl="eager")
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        attn = model.blocks[0].attn
        attn.qkv.weight[1, 1] = math.sqrt(2) * math.log(3)  # q·k1/√2 = ln 3, q·k0 = 0 → softmax (¼, ¾)
        attn.qkv.weight[2:4] = torch.eye(2)
        attn.qkv.weight[4:6] = torch.eye(2)
        attn.out.weight.copy_(torch.eye(2))
    reader = FeatureBasis(name="reader", input_site="blocks.0.ln2", output_site="blocks.0.mlp",
                          W_enc=torch.tensor([[1.0], [0.0]], dtype=torch.float64), b_enc=torch.zeros(1, dtype=torch.float64),
                          W_dec=torch.zeros(1, 2, dtype=torch.float64), b_dec=torch.zeros(2, dtype=torch.float64))
    rep = LocalReplacement(model, torch.tensor([0, 1]), [reader])
    torch.testing.assert_close(rep.patterns["blocks.0.attn.pattern"][0, 0, 1], torch.tensor([0.25, 0.75], dtype=torch.float64))
    g = attribute(model, torch.tensor([0, 1]), [reader], logit_tokens=[0])
    f, _, t, _ = g.slices()
    row = g.features[:, 1].tolist().index(1)  # the feature at position 1
    assert g.adjacency[row, t].tolist() == pytest.approx([0.5, 0.0], abs=1e-12)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="batch_size"):
        GraphConfig(batch_size=0)
    with pytest.raises(ConfigError, match="desired_logit_prob"):
        GraphConfig(desired_logit_prob=1.5)
    cm = compile_program(PROGRAMS["histogram"]())
    with pytest.raises(ValueError, match="logit_tokens must be"):
        attribute(cm.model, torch.tensor([1, 4]), exact_bases(cm), logit_tokens=[99])


class Bigram(torch.nn.Module):
    """An attention-free model with the sites LocalReplacement reads."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(3, 4)
        self.ln_f = torch.nn.Identity()
        self.unembed = torch.nn.Linear(4, 3, bias=False)

    def forward(self, tokens):
        return self.unembed(self.ln_f(self.embed(tokens)))


def test_unfreezable_norms_and_clashing_bases_are_refused():
    model = Transformer(TransformerConfig(vocab_size=4, n_layers=1, n_heads=1, d_model=4, context=4))
    with pytest.raises(ValueError, match="cannot be frozen"):
        LocalReplacement(model, torch.tensor([0, 1]), [], norm_inputs={})
    cm = compile_program(PROGRAMS["histogram"]())
    b = exact_bases(cm)
    bigram = Bigram()
    with pytest.raises(ValueError, match="no '\\*.attn.pattern' sites"):
        LocalReplacement(bigram, torch.tensor([1, 2]), [])
    rep = LocalReplacement(bigram, torch.tensor([1, 2]), [], pattern_sites=())  # no attention: nothing to freeze
    torch.testing.assert_close(rep.logits, bigram(torch.tensor([[1, 2]]))[0].detach())
    with pytest.raises(ValueError, match="same site"):
        LocalReplacement(cm.model, torch.tensor([1, 4]), [b[0], b[0]])
    reads_rebuilt = dataclasses.replace(b[1], input_site=b[0].output_site)
    with pytest.raises(ValueError, match="read a site that another basis rebuilds"):
        LocalReplacement(cm.model, torch.tensor([1, 4]), [b[0], reads_rebuilt])


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def graphs(request):
    program = PROGRAMS[request.param]()
    compiled = compile_program(program)
    compiled.model.double()
    bases = exact_bases(compiled)
    n_tok = len(program.token.values)
    syms = torch.arange(4, n_tok)
    g = make_generator(1)
    prompts = [torch.cat([torch.tensor([1]), syms[torch.randint(0, len(syms), (int(t) - 1,), generator=g)]])
               for t in torch.randint(2, program.max_seq_len + 1, (12,), generator=g)]
    return compiled, bases, prompts, [attribute(compiled.model, p, bases, GraphConfig(batch_size=16)) for p in prompts]


def test_exact_feature_graphs_recover_the_compiled_circuit(graphs):
    """A3: precision = recall = 1 of the graphs' variable-level edges; replacement = completeness = 1."""
    compiled, bases, _, gs = graphs
    rec = edge_recovery(gs, bases, compiled)
    assert rec.precision == 1.0 and rec.recall == 1.0, (rec.found ^ rec.expected)
    for g in gs:
        f, e, t, _ = g.slices()
        n = g.adjacency.shape[0]
        err, tok = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        err[e], tok[t] = True, True
        scores = graph_scores(g.adjacency, g.logit_weights(), err, tok)
        assert abs(scores.replacement - 1) <= 1e-6 and abs(scores.completeness - 1) <= 1e-6
        assert abs(scores.completeness_features - 1) <= 1e-6


def test_max_feature_nodes_visits_the_most_influential_features_and_conserves_rows(graphs):
    """Visiting only some features: their rows equal the full graph's (restricted to the kept columns), the
    dropped columns' effect lands in ``unexplored`` (conservation still exact), and the visited features
    are the most influential ones of the full graph."""
    compiled, bases, prompts, gs = graphs
    k = max(range(len(gs)), key=lambda i: gs[i].n_features)
    full, prompt = gs[k], prompts[k]
    half = full.n_features // 2
    part = attribute(compiled.model, prompt, bases, GraphConfig(batch_size=2, max_feature_nodes=half, update_interval=1))
    assert part.n_features == half
    torch.testing.assert_close(part.adjacency.sum(1) + part.constants + part.unexplored, part.values, rtol=0, atol=1e-9)
    index = {tuple(f): i for i, f in enumerate(full.features.tolist())}
    kept = [index[tuple(f)] for f in part.features.tolist()] + list(range(full.n_features, full.adjacency.shape[0]))
    visited_rows = list(range(part.n_features)) + list(range(part.slices()[3].start, part.adjacency.shape[0]))
    torch.testing.assert_close(part.adjacency[visited_rows], full.adjacency[kept][:, kept][visited_rows], rtol=0, atol=1e-12)
    inf = influence(normalize_matrix(full.adjacency), full.logit_weights())[: full.n_features]
    chosen = inf[[index[tuple(f)] for f in part.features.tolist()]]
    assert chosen.min() >= inf.sort(descending=True).values[half - 1] - 1e-12


def test_pruned_exact_graphs_keep_only_circuit_edges(graphs):
    """A3 after 0.8/0.98 pruning: precision = 1 against the circuit. The spec's second clause (≥ 90% of
    the edges carrying ≥ 1% of the logit influence kept, :func:`influential_edge_recall`) does NOT hold
    under circuit-tracer's pruning rule, so it is reported in docs/circuits.md, not asserted: the 0.8 node
    share counts the token nodes' influence, which can crowd out a feature on the only path (histogram,
    prompt [BOS, 5]: an MLP neuron carrying 47% of the logit influence is pruned). Minimum over these
    12 prompts: previous_token 1.0, induction 0.67, dyck1 0.625, histogram 0.5."""
    compiled, bases, _, gs = graphs
    masks = []
    for g in gs:
        f, _, t, _ = g.slices()
        n = g.adjacency.shape[0]
        always, feats = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        always[t.start:], feats[f] = True, True
        masks.append(prune(g.adjacency, g.logit_weights(), always, features=feats).edge_mask)
    assert edge_recovery(gs, bases, compiled, edge_masks=masks).precision == 1.0


def test_influential_edge_recall_on_the_small_graph():
    a, w = small_graph()
    # flows (share of logit influence): 11←{1,3,6,8} ¼ each, 3←{0,1,6} 1/12, 1←{9,10} ⅙, 0←9 1/12
    kept = torch.zeros(12, 12, dtype=torch.bool)
    kept[11, 1] = kept[11, 3] = kept[1, 9] = True
    assert influential_edge_recall(a, w, kept, min_share=0.1) == pytest.approx(3 / 6)
    assert influential_edge_recall(a, w, kept, min_share=0.2) == pytest.approx(2 / 4)


def test_graph_rows_are_conserved_and_batching_does_not_change_them(graphs):
    compiled, bases, prompts, gs = graphs
    for g in gs:  # Σ_s A[t, s] + constant_t = the target's clean value
        assert not g.unexplored.any()
        torch.testing.assert_close(g.adjacency.sum(1) + g.constants, g.values, rtol=0, atol=1e-9)
    one_by_one = attribute(compiled.model, prompts[0], bases, GraphConfig(batch_size=1))
    torch.testing.assert_close(one_by_one.adjacency, gs[0].adjacency, rtol=0, atol=1e-12)
    # bases are cast to the model's dtype (fp32 bases on the fp64 model give the fp64 graph up to fp32 rounding)
    single = attribute(compiled.model, prompts[0], [b.to(torch.float32) for b in bases], GraphConfig(batch_size=16))
    assert single.adjacency.dtype == torch.float64
    torch.testing.assert_close(single.adjacency, gs[0].adjacency, rtol=0, atol=1e-5)


def check_constrained_interventions(model, bases, prompt, g, atol):
    """Doubling each feature activation and each token embedding in the local replacement model moves every
    target (feature pre-activation, demeaned logit) by that source's column of A; the replacement model with
    the clean sources reproduces the logits."""
    assert torch.equal(g.tokens, prompt)
    eff = constrained_effects(model, g, bases)
    assert eff.replay_error <= atol
    assert eff.measured.shape == (g.n_features + g.n_logits, g.n_features + g.n_tokens)
    torch.testing.assert_close(eff.measured, eff.predicted, rtol=0, atol=atol)


def test_replacement_is_faithful_and_constrained_interventions_match_edges(graphs):
    """A5 (constrained), fp64 to 1e-9."""
    compiled, bases, prompts, gs = graphs
    check_constrained_interventions(compiled.model, bases, prompts[-1], gs[-1], 1e-9)


@pytest.mark.parametrize("name", ["induction", "dyck1"])
def test_constrained_interventions_match_edges_in_float32(name):
    """A5 (constrained) at the spec's fp32 tolerance, 1e-5."""
    compiled = compile_program(PROGRAMS[name]())
    bases = exact_bases(compiled)
    prompt = torch.tensor([1, 4, 5, 5, 4, 5, 4, 4] if name == "induction" else [1, 4, 4, 5, 4, 5, 5, 4])
    check_constrained_interventions(compiled.model, bases, prompt, attribute(compiled.model, prompt, bases), 1e-5)


def test_graph_json_export_round_trip_and_version_check(graphs, tmp_path):
    compiled, bases, prompts, gs = graphs
    g = gs[-1]
    names = [str(int(t)) for t in g.tokens]
    path = write_graph_json(tmp_path / "g.json", g, slug="test", prompt_tokens=names,
                            labels=[b.labels for b in bases])
    doc = read_graph_json(path)
    assert doc["metadata"]["schema_version"] == 1 and doc["metadata"]["transcoder_list"] == list(g.basis_names)
    ids = {n["node_id"] for n in doc["nodes"]}
    f, e, t, lg = g.slices()
    assert {f"E_{int(tok)}_{p}" for p, tok in enumerate(g.tokens)} <= ids  # tokens are always kept
    assert not any(n["feature_type"] == "mlp reconstruction error" for n in doc["nodes"])  # exact: no error node survives
    index = {}  # node id → adjacency index, rebuilt from the id scheme
    for k, (j, p, i) in enumerate(g.features.tolist()):
        index[f"{j}_{i}_{p}"] = k
    for p, tok in enumerate(g.tokens.tolist()):
        index[f"E_{tok}_{p}"] = t.start + p
    for r, tok in enumerate(g.logit_tokens.tolist()):
        index[f"{len(g.basis_names) + 1}_{tok}_{g.n_tokens - 1}"] = lg.start + r
    for link in doc["links"]:
        assert link["weight"] == pytest.approx(float(g.adjacency[index[link["target"]], index[link["source"]]]))
    assert doc["links"], "the pruned graph keeps some edges"
    named = graph_json(g, slug="test", prompt_tokens=names, logit_names=[f"tok<{i}>" for i in range(g.n_logits)])
    logit_clerps = [n["clerp"] for n in named["nodes"] if n["feature_type"] == "logit"]
    assert logit_clerps and all(c.startswith('Output "tok<') for c in logit_clerps)  # decoded names, not ids
    with pytest.raises(ValueError, match="logit_names"):
        graph_json(g, slug="test", prompt_tokens=names, logit_names=["a"] * (g.n_logits + 1))
    back = load_graph(save_graph(tmp_path / "graph", g))
    assert back.basis_names == g.basis_names
    for name in ("tokens", "features", "activations", "logit_tokens", "logit_probs", "adjacency", "values", "constants",
                 "unexplored"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name), rtol=0, atol=0)
    doc["metadata"]["schema_version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="schema_version 2; assay reads version 1"):
        read_graph_json(tmp_path / "v2.json")


def neuron_bases(model):
    """Each block's MLP neurons as an exact GELU 'transcoder' (error 0)."""
    return [FeatureBasis(name=f"blocks.{i}.mlp", input_site=f"blocks.{i}.ln2", output_site=f"blocks.{i}.mlp",
                         W_enc=b.mlp.fc_in.weight.detach().T, b_enc=b.mlp.fc_in.bias.detach(),
                         W_dec=b.mlp.fc_out.weight.detach().T, b_dec=b.mlp.fc_out.bias.detach(),
                         activation=torch.nn.functional.gelu) for i, b in enumerate(model.blocks)]


def test_frozen_layernorm_edges_equal_a_hand_written_linearisation():
    """A 1-layer LayerNorm + GELU transformer: token → neuron and token → logit edges equal the Jacobian of
    a hand-written forward in which the two LayerNorm scales, the final one and the pattern are frozen at
    their clean values (computed by hand too)."""
    cfg = TransformerConfig(vocab_size=7, n_layers=1, n_heads=2, d_model=8, d_mlp=6, context=6)
    model = Transformer(cfg, generator=make_generator(3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # LayerNorm gains/biases and linear biases away from 1/0
            p.add_(0.3 * torch.randn(p.shape, generator=make_generator(p.numel()), dtype=p.dtype))
    tokens = torch.tensor([1, 4, 5, 6, 4])
    t_len, d, h = 5, 8, 2
    blk = model.blocks[0]

    def ln(x, mod, sigma):
        return (x - x.mean(-1, keepdim=True)) / sigma * mod.weight + mod.bias

    def sig(x, mod):
        return (x.var(-1, unbiased=False, keepdim=True) + mod.eps).sqrt()

    def forward(emb, frozen):
        x0 = emb + model.pos_embed.weight[:t_len]
        s1 = frozen["s1"] if frozen else sig(x0, blk.ln1)
        q, k, v = (blk.attn.qkv(ln(x0, blk.ln1, s1))).split(d, -1)
        q, k, v = (z.view(t_len, h, d // h).transpose(0, 1) for z in (q, k, v))
        if frozen:
            pat = frozen["pat"]
        else:
            sc = q @ k.transpose(-1, -2) / math.sqrt(d // h)
            pat = sc.masked_fill(~torch.ones(t_len, t_len, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        x1 = x0 + blk.attn.out((pat @ v).transpose(0, 1).reshape(t_len, d))
        s2 = frozen["s2"] if frozen else sig(x1, blk.ln2)
        pre = ln(x1, blk.ln2, s2) @ blk.mlp.fc_in.weight.T + blk.mlp.fc_in.bias
        x2 = x1 + (frozen["mlp"] if frozen else blk.mlp.fc_out(torch.nn.functional.gelu(pre)))
        sf = frozen["sf"] if frozen else sig(x2, model.ln_f)
        return pre, ln(x2, model.ln_f, sf), dict(s1=s1, s2=s2, sf=sf, pat=pat, mlp=x2 - x1)

    emb = model.embed.weight[tokens].detach()
    with torch.no_grad():
        _, final, clean = forward(emb, None)
        torch.testing.assert_close(final @ model.unembed.weight.T, model(tokens[None])[0])  # the hand forward is right
    graph = attribute(model, tokens, neuron_bases(model), logit_tokens=[2, 5])
    f, _, t, lg = graph.slices()
    u = model.unembed.weight.detach() - model.unembed.weight.detach().mean(0)
    for row, (_, p, i) in enumerate(graph.features.tolist()):
        jac = torch.autograd.functional.jacobian(lambda e, p=p, i=i: forward(e, clean)[0][p, i], emb)
        torch.testing.assert_close(graph.adjacency[row, t], (jac * emb).sum(-1), rtol=0, atol=1e-10)
    for r, v in enumerate([2, 5]):
        jac = torch.autograd.functional.jacobian(lambda e, v=v: forward(e, clean)[1][-1] @ u[v], emb)
        torch.testing.assert_close(graph.adjacency[lg.start + r, t], (jac * emb).sum(-1), rtol=0, atol=1e-10)


def test_layernorm_graphs_conserve_and_match_constrained_interventions():
    """On a 2-layer LayerNorm + GELU transformer with its MLP neurons as features: the replacement model
    reproduces the logits, rows are conserved, and doubling a source moves the targets by its column."""
    cfg = TransformerConfig(vocab_size=9, n_layers=2, n_heads=2, d_model=8, d_mlp=8, context=8)
    model = Transformer(cfg, generator=make_generator(4)).double().eval()
    tokens = torch.tensor([1, 4, 7, 5, 4, 8])
    bases = neuron_bases(model)
    graph = attribute(model, tokens, bases, GraphConfig(batch_size=7))
    torch.testing.assert_close(graph.adjacency.sum(1) + graph.constants, graph.values, rtol=0, atol=1e-10)
    check_constrained_interventions(model, bases, tokens, graph, 1e-10)


def test_an_mlp_without_a_basis_is_an_error_node_on_assay_transformers_too():
    """Only MLP 0 has a basis: MLP 1 (GELU) must not run live in the replacement model (its nonlinearity would make
    the edges a local linearisation, not exact) but become one error node per position, as on other models."""
    cfg = TransformerConfig(vocab_size=9, n_layers=2, n_heads=2, d_model=8, d_mlp=8, context=8)
    model = Transformer(cfg, generator=make_generator(4)).double().eval()
    tokens = torch.tensor([1, 4, 7, 5, 4, 8])
    bases = neuron_bases(model)[:1]
    assert LocalReplacement(model, tokens, bases).error_sites == ("blocks.1.mlp",)
    graph = attribute(model, tokens, bases, GraphConfig(batch_size=7))
    assert graph.basis_names == ("blocks.0.mlp", "blocks.1.mlp")
    torch.testing.assert_close(graph.adjacency.sum(1) + graph.constants, graph.values, rtol=0, atol=1e-10)
    check_constrained_interventions(model, bases, tokens, graph, 1e-10)


def test_subgraph_values_equal_the_frozen_model_with_a_token_removed(graphs):
    """Every edge kept → the clean values; none → the constants; all edges out of one token node dropped →
    the compiled model's own demeaned logits with that token's embedding zeroed and the attention patterns
    frozen (the exact bases make the replacement model the model itself, features re-activated by σ)."""
    from assay import hooks

    compiled, bases, prompts, gs = graphs
    g, prompt = gs[-1], prompts[-1]
    f, _, t, lg = g.slices()
    n = g.adjacency.shape[0]
    rows = list(range(f.stop)) + list(range(lg.start, n))
    full = subgraph_values(g, bases, torch.ones(n, n, dtype=torch.bool))
    torch.testing.assert_close(full[rows], g.values[rows], rtol=0, atol=1e-9)
    torch.testing.assert_close(subgraph_values(g, bases, torch.zeros(n, n, dtype=torch.bool)), g.constants)
    rep = LocalReplacement(compiled.model, prompt, bases)
    u = rep.unembed - rep.unembed.mean(0)
    for p in range(g.n_tokens):
        mask = torch.ones(n, n, dtype=torch.bool)
        mask[:, t.start + p] = False

        def drop(h, p=p):
            h = h.clone()
            h[:, p] = 0.0
            return h

        edits = {"embed": drop, **{s: (lambda h, pat=pat: pat.expand_as(h)) for s, pat in rep.patterns.items()}}
        with torch.no_grad(), hooks.patch(compiled.model, edits), \
                hooks.capture(compiled.model, ["ln_f"]) as cap:
            compiled.model(prompt[None])
        want = cap["ln_f"][0, -1] @ u[g.logit_tokens].T
        torch.testing.assert_close(subgraph_values(g, bases, mask)[lg], want, rtol=0, atol=1e-9)
