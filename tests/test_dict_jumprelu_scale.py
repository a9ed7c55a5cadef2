"""JumpReLU under input normalisation (SAELens#494): θ, its Adam step and the STE bandwidth ε are measured in
the training inputs' mean norm, so a JumpReLU trained for a target L0 reaches it with √d-normalised inputs.

Before the fix (θ and ε in absolute units) the same run below ended at L0 36.8 for target 4 with
normalisation on (5.4 with it off): the symptom of the fragility benchmark (target 8, L0 83)."""

import pytest
import torch

from assay.dictionaries.registry import build_sae, load_sae, save_sae
from assay.dictionaries.trainer import SAETrainConfig, train_saes
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = 4.0


def _planted():
    world = SuperpositionWorld(SuperpositionConfig(n_features=64, d_model=32, profile="constant", p_max=0.06))
    return world.sample(20000, generator=torch.Generator().manual_seed(0)).inputs  # true L0 ≈ 3.8, ‖x‖ ≈ 1


def _train(x, *, normalize: bool, steps: int = 400):
    sae = build_sae("jumprelu", d_in=32, d_sae=128, target_l0=TARGET, l0_coef=10.0, seed=0)

    def batches(start):
        g = torch.Generator().manual_seed(1)
        for _ in range(start, steps):
            yield x[torch.randint(0, x.shape[0], (256,), generator=g)]

    cfg = SAETrainConfig(steps=steps, lr=1e-3, warmup_steps=steps // 10, normalize_inputs=normalize)
    sae, res = train_saes(sae, cfg, batches)
    with torch.no_grad():
        l0 = (sae.encode(x[:4000]) != 0).sum(-1).float().mean().item()
    return sae, res, l0


def test_jumprelu_reaches_target_l0_with_normalised_inputs(tmp_path):
    x = _planted()
    sae, res, l0 = _train(x, normalize=True)
    assert res.input_scale > 5  # normalisation really rescaled the inputs (√32 / 1.06)
    # measured: 5.43 (target 4; the L0 controller settles a little above its target at this budget);
    # before the fix 36.8. Tolerance: within 1.5× of the target.
    assert TARGET / 1.5 <= l0 <= TARGET * 1.5, l0
    _, _, l0_raw = _train(x, normalize=False)
    assert l0 == pytest.approx(l0_raw, rel=0.1)  # measured 5.43 vs 5.42: the scale no longer matters
    # the trained input norm travels with the weights: save → load keeps θ and the codes
    back = load_sae(save_sae(tmp_path / "j", sae))
    torch.testing.assert_close(back.threshold, sae.threshold)
    torch.testing.assert_close(back.encode(x[:50]), sae.encode(x[:50]))


def test_threshold_and_bandwidth_are_in_units_of_the_input_norm():
    sae = build_sae("jumprelu", d_in=4, d_sae=3, threshold_init=0.01, bandwidth=0.002)
    x = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 6.0, 8.0]])  # mean norm 7.5
    sae.init_from_batch(x)
    torch.testing.assert_close(sae.threshold.detach(), torch.full((3,), 0.075))
    torch.testing.assert_close(sae.eps, torch.tensor(0.015))
    sae.set_threshold(torch.tensor([0.15, 0.3, 0.75]))
    torch.testing.assert_close(sae.rel_threshold.detach(), torch.tensor([0.02, 0.04, 0.1]))
    # folding an input scale s keeps θ: pre-activations on raw x equal those on s·x before folding
    z = sae.encode(2.0 * x)
    sae.fold_input_scale(2.0)
    torch.testing.assert_close(sae.encode(x), z)


def test_an_artifact_saved_with_the_old_threshold_layout_loads_with_the_same_codes(tmp_path):
    from assay.artifact import save_artifact

    sae = build_sae("jumprelu", d_in=6, d_sae=10, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.set_threshold(torch.rand(10, generator=g) * 0.5)
    old = {k: v for k, v in sae.state_dict().items() if k not in ("rel_threshold", "input_norm")}
    old["threshold"] = sae.threshold.detach().clone()  # the layout before this change
    save_artifact(tmp_path / "old", kind="sae.jumprelu", config=sae.cfg, tensors={"weights": old}, meta={})
    back = load_sae(tmp_path / "old")
    x = torch.randn(20, 6, generator=g)
    torch.testing.assert_close(back.encode(x), sae.encode(x))
