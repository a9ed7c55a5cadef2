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
    with hooks.capture(m, "layers.0", accumulate=True) as cap:
        m(torch.randn(2, 4))
        m(torch.randn(3, 4))
    assert cap["layers.0"].shape == (5, 4)


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
