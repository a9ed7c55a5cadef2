"""Dead-latent resampling (Bricken et al. 2023; dictionaries.md §1.5): planted dead latents are revived, the
new atoms are unit rows of badly reconstructed inputs, and their Adam moments are zeroed."""

import pytest
import torch

from assay.config import ConfigError
from assay.dictionaries.registry import build_sae
from assay.dictionaries.resample import resample_dead
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer, train_saes
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

pytestmark = pytest.mark.usefixtures("one_thread")

DEAD = torch.arange(0, 32, 4)  # 8 of 32 latents planted dead; the world has 32 features, so all are needed


def _x():
    world = SuperpositionWorld(SuperpositionConfig(n_features=32, d_model=16, profile="constant", p_max=0.1))
    return world.sample(8000, generator=torch.Generator().manual_seed(0)).inputs


def _killed():
    sae = build_sae("relu", d_in=16, d_sae=32, l1_coef=0.5, seed=0)  # the setting resampling was made for
    with torch.no_grad():
        sae.W_enc[:, DEAD] = -sae.W_enc[:, DEAD].abs() * 0  # these latents read nothing ...
        sae.b_enc[DEAD] = -1e3  # ... and never fire
    return sae


def _fired(sae, x):
    with torch.no_grad():
        return (sae.encode(x) > 0).any(0)


@pytest.mark.parametrize("every", [None, 50])
def test_planted_dead_latents_are_revived_only_with_resampling(every):
    x = _x()

    def batches(start):
        g = torch.Generator().manual_seed(1)
        for _ in range(start, 230):
            yield x[torch.randint(0, x.shape[0], (256,), generator=g)]

    trainer_cfg = SAETrainConfig(steps=230, lr=3e-3, warmup_steps=10, resample_every=every)
    sae, _ = train_saes(_killed(), trainer_cfg, batches)
    fired = _fired(sae, x)
    if every is None:
        assert not fired[DEAD].any()  # the control: without resampling they stay dead
    else:
        assert fired[DEAD].all(), fired[DEAD]  # measured: all 8 revived (a TopK SAE, k = 4, revived 5 of 8)


def test_resample_writes_unit_rows_of_sampled_inputs_and_zeros_adam_state():
    x = _x()[:256]
    sae = _killed()
    trainer = SAETrainer(sae, SAETrainConfig(steps=2, lr=1e-3, warmup_steps=1, normalize_inputs=False))
    trainer.train_step(x)  # populate Adam's moments
    opt = trainer.opts[0]
    dead = torch.zeros(32, dtype=torch.bool)
    dead[DEAD] = True
    recon = sae(x).recon.detach()
    enc_alive = sae.W_enc.detach().norm(dim=0)[~dead].mean()
    n = resample_dead(sae, dead, x, x, recon, opt, generator=torch.Generator().manual_seed(0))
    assert n == 8
    unit_x = x / (x.norm(dim=-1, keepdim=True) + 1e-8)  # (some world rows are all zero)
    cos = sae.W_dec.detach()[DEAD] @ unit_x.t()
    assert torch.allclose(cos.max(1).values, torch.ones(8), atol=1e-5)  # each new atom is one input's direction
    torch.testing.assert_close(sae.W_enc.detach()[:, DEAD].norm(dim=0), torch.full((8,), 0.2 * enc_alive.item()))
    assert torch.equal(sae.b_enc.detach()[DEAD], torch.zeros(8))
    for p, sl in ((sae.W_dec, (DEAD,)), (sae.W_enc, (slice(None), DEAD)), (sae.b_enc, (DEAD,))):
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][name][sl], torch.zeros_like(opt.state[p][name][sl]))
        alive_state = opt.state[p]["exp_avg_sq"]
        assert alive_state.abs().sum() > 0  # the alive latents keep their moments


def test_resampling_refused_for_derived_decoders():
    with pytest.raises(ConfigError, match="resample_every"):
        SAETrainer(build_sae("spade", d_in=8, d_sae=16), SAETrainConfig(steps=2, resample_every=4))
