import pytest
import torch
from torch import nn

from assay import hooks


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.calls = []

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            self.calls.append(i)
            x = torch.relu(layer(x))
        return x


class TupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return (self.lin(x), "extra")


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_capture_matches_manual_forward():
    torch.manual_seed(0)
    m, x = Tiny(), torch.randn(5, 4)
    with hooks.capture(m, ["layers.0", "layers.2"]) as cap:
        y = m(x)
    h0 = torch.relu(m.layers[0](x))
    assert torch.equal(cap["layers.0"], m.layers[0](x))
    assert torch.equal(cap["layers.2"], m.layers[2](torch.relu(m.layers[1](h0))))
    assert torch.equal(torch.relu(cap["layers.2"]), y)
    assert n_hooks(m) == 0


def test_stop_at_runs_only_needed_layers():
    m = Tiny()
    h = hooks.run_to(m, "layers.0", torch.randn(2, 4))
    assert m.calls == [0]
    assert h.shape == (2, 4)
    assert n_hooks(m) == 0


def test_hooks_removed_after_exception():
    m = Tiny()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.capture(m, ["layers.1"]), hooks.patch(m, {"layers.0": lambda h: h}):
            raise RuntimeError("boom")
    assert n_hooks(m) == 0

    def bad(h):
        raise ValueError("inside hook")

    with pytest.raises(ValueError, match="inside hook"):
        with hooks.patch(m, {"layers.1": bad}):
            m(torch.randn(1, 4))
    assert n_hooks(m) == 0


def test_patch_and_ablate():
    torch.manual_seed(0)
    m, x = Tiny(), torch.randn(3, 4)
    with hooks.patch(m, {"layers.2": lambda h: h * 0 + 1.0}):
        assert torch.equal(m(x), torch.ones(3, 4))
    with hooks.ablate(m, "layers.2"):
        assert torch.equal(m(x), torch.zeros(3, 4))
    mean = torch.full((4,), 2.0)
    with hooks.ablate(m, ["layers.2"], mean):
        assert torch.equal(m(x), torch.full((3, 4), 2.0))
    with pytest.raises(ValueError, match="shape"):
        with hooks.patch(m, {"layers.0": lambda h: h[:, :2]}):
            m(x)
    assert n_hooks(m) == 0


def test_tuple_outputs_patch_first_element_only():
    m = nn.Sequential(TupleLayer())
    x = torch.randn(2, 4)
    with hooks.capture(m, "0") as cap, hooks.patch(m, {"0": lambda h: h + 1}):
        out = m(x)
    assert out[1] == "extra"
    assert torch.allclose(out[0], m[0].lin(x) + 1)
    # the capture hook was registered first, so it sees the value before the patch
    assert torch.allclose(cap["0"], m[0].lin(x))


def test_unknown_site_lists_close_names():
    m = Tiny()
    with pytest.raises(hooks.SiteError, match="layers.1"):
        hooks.resolve(m, "layer.1")
    with pytest.raises(hooks.SiteError, match="non-empty"):
        hooks.resolve(m, "")


def test_accumulate_concatenates_passes():
    m = Tiny()
    xs = [torch.randn(n, 4) for n in (2, 3, 1)]
    with hooks.capture(m, "layers.0", accumulate=True) as cap:
        m(xs[0])
        m(xs[1])
        assert cap["layers.0"].shape == (5, 4)  # readable inside the block
        m(xs[2])
    assert torch.equal(cap["layers.0"], m.layers[0](torch.cat(xs)).detach())
    assert list(cap.keys()) == ["layers.0"] and torch.equal(dict(cap.items())["layers.0"], cap["layers.0"])


def test_accumulate_joins_once_when_read(monkeypatch):
    """k passes read once cost one concatenation (not one per pass: that re-copies everything, quadratic)."""
    m = Tiny()
    calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or real_cat(*a, **k))
    with hooks.capture(m, "layers.0", accumulate=True) as cap:
        for _ in range(50):
            m(torch.randn(2, 4))
    assert len(calls) == 0
    assert cap["layers.0"].shape == (100, 4) and len(calls) == 1


def test_stop_at_inside_a_with_block_runs_the_rest_of_the_block():
    """The natural loop collects one tensor per batch: the stop ends the forward pass, not the block."""
    m = Tiny()
    acts, after = [], []
    for _ in range(3):
        with hooks.capture(m, ["layers.0"], stop_at="layers.0") as cap:
            y = m(torch.randn(2, 4))
            after.append(y)
            acts.append(cap["layers.0"])
    assert len(acts) == 3 and all(a.shape == (2, 4) for a in acts)
    assert after == [None, None, None]  # the stopped forward returns None
    assert m.calls == [0, 0, 0]  # and only the first layer ran
    assert "forward" not in m.__dict__ and n_hooks(m) == 0  # the model is left as it was


def test_stop_at_reached_through_an_outer_module_is_an_error():
    m = Tiny()
    outer = nn.Sequential(m, nn.Linear(4, 2))
    with pytest.raises(hooks.StopOutsideModel, match="outside the forward"):  # hooked the outer, called the inner
        with hooks.capture(outer, ["0.layers.0"], stop_at="0.layers.0"):
            m(torch.randn(2, 4))
    assert "forward" not in outer.__dict__ and n_hooks(outer) == 0
    with pytest.raises(TypeError) as info:  # hooked the inner, called the outer: the outer gets None
        with hooks.capture(m, ["layers.0"], stop_at="layers.0"):
            outer(torch.randn(2, 4))
    assert "returned None; call that model itself" in "".join(getattr(info.value, "__notes__", []))
    assert "forward" not in m.__dict__ and n_hooks(m) == 0


def test_hf_llama_and_bert_layers():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    base_llama = n_hooks(llama)  # transformers registers hooks of its own
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        ref = llama(ids, output_hidden_states=True).hidden_states
        with hooks.capture(llama, ["model.layers.0"]) as cap:
            llama(ids)
    assert torch.allclose(cap["model.layers.0"], ref[1], atol=1e-6)
    h = hooks.run_to(llama, "model.layers.0", ids)
    assert torch.allclose(h, ref[1], atol=1e-6)
    with torch.no_grad(), hooks.ablate(llama, "model.layers.1"):
        logits = llama(ids).logits
    final = llama.lm_head(llama.model.norm(torch.zeros(2, 7, 32)))
    assert torch.allclose(logits, final, atol=1e-6)

    bcfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    bert = transformers.BertModel(bcfg).eval()
    base_bert = n_hooks(bert)
    with torch.no_grad():
        ref = bert(ids, output_hidden_states=True).hidden_states
        with hooks.capture(bert, "encoder.layer.1") as cap:
            bert(ids)
    assert torch.allclose(cap["encoder.layer.1"], ref[2], atol=1e-6)
    assert n_hooks(llama) == base_llama and n_hooks(bert) == base_bert
