import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import make_generator
from assay.worlds.digits import DigitsConfig, SignalDistractorDigits, digit_split
from assay.worlds.tabular import TabularConfig, TabularSignalWorld


def test_digit_split_is_disjoint_and_70_30():
    tr, _ = digit_split("train")
    te, _ = digit_split("test")
    assert len(tr) == int(0.7 * 1797) and len(tr) + len(te) == 1797
    flat_tr = {t.tobytes() for t in tr}
    assert sum(t.tobytes() in flat_tr for t in te) < 5  # sklearn digits has a few exact duplicates


def test_digits_truth_is_consistent():
    w = SignalDistractorDigits(DigitsConfig(split="test"))
    b = w.sample(64, generator=make_generator(3))
    assert b.inputs.shape == (64, 3, 32, 32) and b.inputs.min() >= 0 and b.inputs.max() <= 1
    sig, dec = b.labels["signal_mask"], b.labels["decoy_mask"]
    assert not (sig & dec).any() and not (b.labels["band_mask"] & sig).any()
    assert (b.labels["y_decoy"] != b.targets).all()
    # the signal mask is the upscaled digit: rebuilding its bounding box gives a 2x2 block structure
    for i in range(8):
        rows, cols = sig[i].nonzero(as_tuple=True)
        assert rows.numel() > 0 and rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
        # outside the signal, decoy and bands every pixel is the one background colour
        clutter = sig[i] | dec[i] | b.labels["band_mask"][i]
        rest = b.inputs[i][:, ~clutter]
        assert torch.allclose(rest, rest[:, :1].expand_as(rest))
    assert torch.equal(b.inputs, w.sample(64, generator=make_generator(3)).inputs)


def test_spurious_shortcut_and_no_decoy():
    w = SignalDistractorDigits(DigitsConfig(spurious_rho=1.0))
    b = w.sample(50, generator=make_generator(0))
    assert torch.equal(b.labels["y_decoy"], (b.targets + 1) % 10)
    b = SignalDistractorDigits(DigitsConfig(decoy=False, max_bands=0)).sample(20, generator=make_generator(0))
    assert not b.labels["decoy_mask"].any() and not b.labels["band_mask"].any()
    # with no clutter every non-signal pixel is the background colour
    for i in range(20):
        off = ~b.labels["signal_mask"][i]
        img = b.inputs[i][:, off]
        assert torch.allclose(img, img[:, :1].expand_as(img))


def test_tabular_labels_follow_the_masked_linear_rule():
    w = TabularSignalWorld(TabularConfig(d=10, n_clusters=5))
    b = w.sample(4000, generator=make_generator(0))
    score = torch.sigmoid((b.inputs * b.labels["gt_attribution"]).sum(1))
    assert torch.equal((score > w.threshold).long(), b.targets)
    assert 0.4 < b.targets.float().mean() < 0.6
    assert torch.equal(b.labels["gt_attribution"], w.masks[b.labels["cluster"]] * w.weights)
    # features outside the mask do not move the label
    x = b.inputs.clone()
    x[~b.labels["signal_mask"]] += 100.0
    assert torch.equal((torch.sigmoid((x * b.labels["gt_attribution"]).sum(1)) > w.threshold).long(), b.targets)


@pytest.mark.parametrize("cls, kwargs, match", [
    (DigitsConfig, dict(split="val"), "split"), (DigitsConfig, dict(max_bands=-1), "max_bands"),
    (DigitsConfig, dict(spurious_rho=2.0), "spurious_rho"), (TabularConfig, dict(d=0), "positive"),
    (TabularConfig, dict(sparsity=1.0), "sparsity"),
])
def test_bad_configs(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)
