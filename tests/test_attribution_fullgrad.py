"""FullGrad completeness (spec §2 check values; BN effective bias; CNN and transformer) and Grad-CAM."""

import pytest
import torch
from torch import nn

from assay.attribution.fullgrad import FullGradConfig, effective_bias, fullgrad
from assay.attribution.gradcam import GradCamConfig, gradcam, gradcam_map
from assay.hooks import patch


def test_spec_check_values_float32():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(1, 4)
    expected = {0: 0.472166, 1: -0.047199, 2: -0.361048}
    for t, val in expected.items():
        r = fullgrad(net, x, t)
        assert abs(float(r.output[0]) - val) < 1e-5
        decomposed = r.input_term.sum() + r.bias_total[0]
        assert abs(float(decomposed) - val) < 1e-5
    assert int(fullgrad(net, x).target[0]) == 0


def _cnn(inplace=False):
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=inplace), nn.Linear(8, 3),
    ).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def test_cnn_with_batchnorm_is_complete_in_float64_and_inplace_relu_is_handled():
    torch.manual_seed(1)
    net = _cnn()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    r = fullgrad(net, x)
    assert r.completeness_gap.abs().max() < 1e-6
    assert r.saliency.shape == (3, 8, 8) and (r.saliency >= 0).all()
    assert any(k.startswith("1#") for k in r.bias_terms)  # BatchNorm2d after a bias-free conv carries the bias
    bn = net[1]
    manual = bn(torch.zeros(1, 4, 1, 1, dtype=torch.float64)).flatten()
    torch.testing.assert_close(effective_bias(bn), manual)
    net_inplace = _cnn(inplace=True)
    net_inplace.load_state_dict(net.state_dict())
    r2 = fullgrad(net_inplace, x)
    torch.testing.assert_close(r2.saliency, r.saliency)
    torch.testing.assert_close(r2.completeness_gap, r.completeness_gap, atol=1e-9, rtol=0)
    # the smooth and simple variants produce maps of the same shape
    assert fullgrad(net, x, config=FullGradConfig(variant="smooth", n_samples=3)).saliency.shape == (3, 8, 8)
    assert fullgrad(net, x, config=FullGradConfig(variant="simple")).saliency.shape == (3, 8, 8)


def test_reused_module_counts_each_call():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.a(torch.relu(self.a(x)))))

    torch.manual_seed(2)
    net = Reuse().double()
    r = fullgrad(net, torch.randn(5, 4, dtype=torch.float64))
    assert {"a#0", "a#1", "head#0"} <= set(r.bias_terms)
    assert r.completeness_gap.abs().max() < 1e-10


def test_smooth_activation_breaks_identity_unless_implicit_bias_is_added():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    assert fullgrad(net, x).completeness_gap.abs().max() > 1e-3
    assert fullgrad(net, x, config=FullGradConfig(implicit_bias=("1",))).completeness_gap.abs().max() < 1e-10


def test_tiny_transformer_complete_with_implicit_biases():
    from assay.models.transformer import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=11, context=6, n_layers=2, d_model=8, n_heads=2, d_mlp=16, dropout=0.0,
                            attn_impl="eager")
    model = Transformer(cfg, generator=torch.Generator().manual_seed(0)).double().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.uniform_(-0.3, 0.3)

    class OnEmbeddings(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, e):
            with patch(self.m, {"embed": lambda h: e, "pos_embed": torch.zeros_like}):
                return self.m(torch.zeros(e.shape[:2], dtype=torch.long))[:, -1]

    f = OnEmbeddings(model)
    e = torch.randn(2, 5, 8, dtype=torch.float64)
    sites = ["m.ln_f"] + [f"m.blocks.{i}.{s}" for i in range(2) for s in ("ln1", "attn", "ln2", "mlp")]
    r = fullgrad(f, e, config=FullGradConfig(implicit_bias=tuple(sites)))
    assert r.completeness_gap.abs().max() < 1e-6
    assert fullgrad(f, e).completeness_gap.abs().max() > 1e-3


def test_gradcam_toy_and_model():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [2.0, 0.0]]]])
    g = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -0.5)])[None]  # ∂/∂A of ΣA¹ − 0.5ΣA²
    cam, alpha = gradcam_map(a, g)
    torch.testing.assert_close(alpha, torch.tensor([[1.0, -0.5]]))
    torch.testing.assert_close(cam, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(gradcam_map(a, g, relu=False)[0], torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]))
    net = _cnn()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    r = gradcam(net, x, 1, config=GradCamConfig(layer="4"))
    assert r.values.shape == (2, 8, 8) and r.layer_map.shape == (2, 8, 8) and (r.values >= 0).all()
    with pytest.raises(ValueError, match="\\[B, K, h, w\\]"):
        gradcam(net, x, 1, config=GradCamConfig(layer="7"))


def test_fullgrad_refuses_training_batchnorm_and_inplace_input():
    net = _cnn().train()
    with pytest.raises(ValueError, match="model.eval"):
        fullgrad(net, torch.randn(2, 2, 8, 8, dtype=torch.float64))
    bad = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 2)).double()
    with pytest.raises(ValueError, match="in-place"):
        fullgrad(bad, torch.randn(2, 3, dtype=torch.float64))


def test_gradcam_inplace_relu_after_the_layer_and_reused_layer():
    torch.manual_seed(0)
    net, net_inplace = _cnn(), _cnn(inplace=True)
    net_inplace.load_state_dict(net.state_dict())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    ref = gradcam(net, x, 1, config=GradCamConfig(layer="3", relu=False))
    got = gradcam(net_inplace, x, 1, config=GradCamConfig(layer="3", relu=False))  # conv "3" feeds ReLU(inplace)
    torch.testing.assert_close(got.layer_map, ref.layer_map)
    torch.testing.assert_close(got.weights, ref.weights)
    # the maps are the conv's (pre-ReLU) outputs: Σ_k α_k A^k with A from a plain forward to "3"
    with torch.no_grad():
        a = net[:4](x)
    torch.testing.assert_close(ref.layer_map, torch.einsum("bk,bkhw->bhw", ref.weights, a))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(2, 3)

        def forward(self, z):
            return self.fc(self.conv(torch.relu(self.conv(z))).mean((2, 3)))

    with pytest.raises(ValueError, match="ran 2 times"):
        gradcam(Twice().double().eval(), x, 0, config=GradCamConfig(layer="conv"))
    with pytest.raises(TypeError, match="floating-point"):
        gradcam(net, torch.ones(2, 2, 8, 8, dtype=torch.long), 0, config=GradCamConfig(layer="3"))
    with pytest.raises(TypeError, match="floating-point"):
        fullgrad(net, torch.ones(2, 2, 8, 8, dtype=torch.long))
