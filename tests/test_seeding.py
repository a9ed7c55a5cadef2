"""Randomness comes from `generator=`: model constructors and dropout draw from the generator given,
leave the global RNG alone, and reproduce PyTorch's own default initialisation; the library source
never seeds global state."""

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import assay
from assay.config import ConfigError
from assay.data_attribution.retrain import fit_logreg, fit_mlp
from assay.models.cnn import SmallCNN
from assay.models.init import materialise
from assay.models.mlp import MLP
from assay.models.train import TrainConfig, train
from assay.models.transformer import Transformer, TransformerConfig, causal_attention, dropout
from assay.robustness.lcnn import LowCurvatureCNN
from assay.robustness.lcnn_layers import spectral_norm_linear
from assay.worlds.base import make_generator
from assay.worlds.markov import MarkovConfig, MarkovMixtureWorld

TINY_TRANSFORMER = TransformerConfig(vocab_size=11, n_layers=2, d_model=16, n_heads=2, context=8, dropout=0.2)

CONSTRUCTORS = {
    "mlp": lambda g: MLP(6, (8, 5), 3, generator=g),
    "cnn": lambda g: SmallCNN(2, 4, (4, 6), image_size=8, batch_norm=True, generator=g),
    "lcnn": lambda g: LowCurvatureCNN(2, 3, (4,), 8, spectral_conv=True, generator=g),
    "transformer": lambda g: Transformer(TINY_TRANSFORMER, generator=g),
}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _with_global_seed(seed: int, build):
    """What `build()` gives after `torch.manual_seed(seed)` (tests may seed; the global state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_a_constructor_draws_from_its_generator_only(name):
    build = CONSTRUCTORS[name]
    before = torch.random.get_rng_state()
    a, b, c = (_state(build(make_generator(s))) for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), before), "building a model touched the global RNG"
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed gave different weights"
    drawn = [k for k in a if "weight" in k and a[k].numel() > 1 and a[k].std() > 0]
    assert drawn and all(not torch.equal(a[k], c[k]) for k in drawn), "different seeds gave the same weights"


def test_materialise_reproduces_pytorch_default_initialisation():
    def layers():
        return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv1d(2, 3, 2),
                             nn.Embedding(6, 3, padding_idx=1), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))

    reference = _with_global_seed(3, layers)
    with torch.device("meta"):
        built = layers()
    before = torch.random.get_rng_state()
    materialise(built, generator=make_generator(3))
    assert torch.equal(torch.random.get_rng_state(), before)
    ref = reference.state_dict()
    assert built.state_dict().keys() == ref.keys()
    for k, v in built.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_mlp_and_cnn_weights_equal_pytorch_layers_under_the_same_seed():
    mlp = MLP(6, (8,), 3, generator=make_generator(11))
    fc0, out = _with_global_seed(11, lambda: (nn.Linear(6, 8), nn.Linear(8, 3)))
    for mine, ref in ((mlp.fc0, fc0), (mlp.out, out)):
        assert torch.equal(mine.weight, ref.weight) and torch.equal(mine.bias, ref.bias)
    cnn = SmallCNN(1, 2, (3,), image_size=4, generator=make_generator(12))
    conv, fc = _with_global_seed(12, lambda: (nn.Conv2d(1, 3, 3, padding=1), nn.Linear(12, 2)))
    assert torch.equal(cnn.conv0.weight, conv.weight) and torch.equal(cnn.fc.bias, fc.bias)


def test_spectral_norm_linear_equals_pytorchs_under_the_same_seed():
    def linear():
        layer = nn.Linear(20, 7, device="meta").to_empty(device="cpu")
        layer.load_state_dict({"weight": torch.randn(7, 20, generator=make_generator(3)), "bias": torch.zeros(7)})
        return layer

    ref = _with_global_seed(4, lambda: nn.utils.parametrizations.spectral_norm(linear()))  # u, v: global seed 4
    layer = linear()
    before = torch.random.get_rng_state()
    mine = spectral_norm_linear(layer, generator=make_generator(4))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert mine.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in mine.state_dict().items())
    assert torch.equal(mine.weight, ref.weight)


def test_default_linear_init_is_kaiming_uniform_in_distribution():
    # closed form: kaiming_uniform(a=√5) is U(−b, b) with b = 1/√fan_in, variance b²/3
    fan_in = 400
    w = MLP(fan_in, (), 500, generator=make_generator(0)).out.weight
    bound = 1 / math.sqrt(fan_in)
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.02)


def test_materialise_refuses_a_module_it_cannot_initialise():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(2, 3), Custom())
    with pytest.raises(TypeError, match="Custom"):
        materialise(model)


def test_dropout_draws_its_mask_from_the_generator():
    x = torch.ones(200, 500)
    before = torch.random.get_rng_state()
    a = dropout(x, 0.3, generator=make_generator(1))
    b = dropout(x, 0.3, generator=make_generator(1))
    c = dropout(x, 0.3, generator=make_generator(2))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, torch.tensor(1 / 0.7).item()}  # survivors scaled by 1/(1-p)
    assert (a == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(dropout(x, 0.0), x)


def test_attention_with_dropout_is_the_same_for_both_kernels_and_seeded():
    g = make_generator(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))
    sdpa = causal_attention(q, k, v, impl="sdpa", dropout_p=0.5, generator=make_generator(9))
    eager = causal_attention(q, k, v, impl="eager", dropout_p=0.5, generator=make_generator(9))
    assert torch.equal(sdpa, eager)
    assert not torch.allclose(sdpa, causal_attention(q, k, v, impl="sdpa"))


def test_transformer_training_forward_is_seeded_by_its_generator():
    model = Transformer(TINY_TRANSFORMER, generator=make_generator(0)).train()
    tokens = torch.randint(0, 11, (3, 8), generator=make_generator(1))
    before = torch.random.get_rng_state()
    a = model(tokens, generator=make_generator(4))
    b = model(tokens, generator=make_generator(4))
    c = model(tokens, generator=make_generator(5))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.eval()(tokens, generator=make_generator(4)), model(tokens))  # eval: no dropout


def test_train_refuses_dropout_it_cannot_seed():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(6, 6)
            self.drop = nn.Dropout(0.1)

        def forward(self, tokens):
            return self.drop(self.embed(tokens))

    world = MarkovMixtureWorld(MarkovConfig(n_states=6, seq_len=8))
    with pytest.raises(ConfigError, match="generator="):
        train(Plain(), world, TrainConfig(steps=1, batch_size=2, eval_size=2))


def test_fitting_helpers_leave_the_global_rng_alone():
    x = torch.randn(40, 3, generator=make_generator(0))
    y = (x[:, 0] > 0).long()
    before = torch.random.get_rng_state()
    fit_logreg(x, y, 2)
    fit_mlp(x, y, 2, seed=0, epochs=1, hidden=4)
    assert torch.equal(torch.random.get_rng_state(), before)


_GLOBAL_SEEDING = {
    "torch.manual_seed", "torch.random.manual_seed", "torch.seed", "torch.random.seed", "torch.random.fork_rng",
    "torch.cuda.manual_seed", "torch.cuda.manual_seed_all", "torch.set_rng_state", "torch.random.set_rng_state",
    "np.random.seed", "numpy.random.seed", "random.seed",
}


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_the_library_never_seeds_or_forks_the_global_rng():
    root = Path(assay.__file__).parent
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno}: {_dotted(node.func)}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _dotted(node.func) in _GLOBAL_SEEDING
    ]
    assert not found, "library code seeds global RNG state; take a generator= instead:\n" + "\n".join(found)
