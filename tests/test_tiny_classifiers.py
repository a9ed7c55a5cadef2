import pytest
import torch

from assay import hooks
from assay.config import ConfigError
from assay.models.classifier_zoo import ClassifierRecipe, world_classifier
from assay.models.cnn import SmallCNN
from assay.models.fit import accuracy, fit_classifier
from assay.models.mlp import MLP
from assay.worlds.base import make_generator
from assay.worlds.digits import digit_split
from assay.worlds.tabular import TabularConfig, TabularSignalWorld


def test_mlp_learns_tabular_world_and_is_seeded():
    w = TabularSignalWorld(TabularConfig(d=10, n_clusters=4))
    tr, te = w.sample(2000, generator=make_generator(0)), w.sample(500, generator=make_generator(1))
    m1 = fit_classifier(MLP(10, (32,), 2, generator=make_generator(0)), tr.inputs, tr.targets, epochs=10, seed=1)
    m2 = fit_classifier(MLP(10, (32,), 2, generator=make_generator(0)), tr.inputs, tr.targets, epochs=10, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert accuracy(m1, te.inputs, te.targets) > 0.85


def test_cnn_sites_and_training_on_digits():
    cnn = SmallCNN(batch_norm=True)
    with torch.no_grad(), hooks.capture(cnn, ["act1", "bn0"]) as cap:
        cnn(torch.rand(4, 3, 32, 32))
    assert cap["act1"].shape == (4, 32, 16, 16) and cap["bn0"].shape == (4, 16, 32, 32)
    x, y = (torch.tensor(a) for a in digit_split("train"))
    xt, yt = (torch.tensor(a) for a in digit_split("test"))
    torch.manual_seed(0)
    small = fit_classifier(SmallCNN(1, 10, (16,), image_size=8), x[:, None], y, epochs=5, lr=3e-3)
    assert accuracy(small, xt[:, None], yt) > 0.7  # chance is 0.1


def test_classifier_zoo_caches(tmp_path):
    recipe = ClassifierRecipe(n_train=400, n_test=200, epochs=3, batch_size=64, lr=3e-3, hidden=(16,))
    a = world_classifier("tabular", world_config=TabularConfig(d=6, n_clusters=3), recipe=recipe, cache_dir=tmp_path)
    b = world_classifier("tabular", world_config=TabularConfig(d=6, n_clusters=3), recipe=recipe, cache_dir=tmp_path)
    assert a.trained and not b.trained and a.test_accuracy == b.test_accuracy > 0.6
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    with pytest.raises(ConfigError, match="no default classifier"):
        world_classifier("dyck", cache_dir=tmp_path)


def test_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        MLP(0, (4,), 2)
    with pytest.raises(ValueError, match="divisible"):
        SmallCNN(image_size=30)
    with pytest.raises(ValueError, match="rows"):
        fit_classifier(MLP(2, (2,), 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_fit_classifier_regularisers_match_a_hand_written_loop():
    import torch.nn.functional as F

    from assay.robustness.regularisers import gradient_norm_penalty

    x = torch.randn(40, 3, generator=make_generator(0))
    y = (x[:, 0] > 0).long()

    def reference(noise, lam):  # the loop written out: shuffle, then noise, from one generator
        model = MLP(3, (8,), 2, generator=make_generator(1))
        g = torch.Generator().manual_seed(2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        for _ in range(2):
            order = torch.randperm(40, generator=g)
            for s in range(0, 40, 16):
                xb, yb = x[order[s:s + 16]], y[order[s:s + 16]]
                xb = xb + noise * torch.randn(xb.shape, generator=g) if noise else xb
                loss = F.cross_entropy(model(xb), yb) + (lam * gradient_norm_penalty(model, xb, yb) if lam else 0)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model

    for noise, lam in ((0.5, 0.0), (0.0, 3.0)):
        model = MLP(3, (8,), 2, generator=make_generator(1))
        penalty = (lambda xb, yb, m=model, w=lam: w * gradient_norm_penalty(m, xb, yb)) if lam else None
        fit_classifier(model, x, y, epochs=2, batch_size=16, lr=1e-2, seed=2, input_noise=noise, penalty=penalty)
        for a, b in zip(model.parameters(), reference(noise, lam).parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    plain = fit_classifier(MLP(3, (8,), 2, generator=make_generator(1)), x, y, epochs=2, batch_size=16, lr=1e-2, seed=2)
    assert not torch.equal(plain.out.weight, model.out.weight)  # the penalty changed the fit
    with pytest.raises(ValueError, match="input_noise"):
        fit_classifier(MLP(2, (2,), 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), input_noise=-1.0)
