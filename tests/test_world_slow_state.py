"""Slow-state world: the state chain's statistics, the decoys, and x rebuilt exactly from the labels."""

import pytest
import torch

from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.slow_state import SlowStateConfig, SlowStateWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def test_state_chain_and_decoys_have_the_configured_rates():
    w = SlowStateWorld(SlowStateConfig(switch_probability=0.1, faithfulness=0.7, length=50))
    b = w.sample(400, generator=make_generator(0))
    s, shown = b.labels["state"], b.labels["shown"]
    assert b.inputs.shape == (400, 50, 16) and s.shape == shown.shape == (400, 50)
    switches = (s[:, 1:] != s[:, :-1]).float().mean().item()
    assert switches == pytest.approx(0.1, abs=0.01)  # 19,600 transitions: binomial sd 0.002
    assert (shown == s).float().mean().item() == pytest.approx(0.7, abs=0.01)
    start = torch.bincount(s[:, 0], minlength=4).float() / 400
    assert (start - 0.25).abs().max() < 0.08
    decoys = shown[shown != s]
    assert torch.bincount(decoys, minlength=4).min() > 0.2 * decoys.numel() / 4  # every state serves as a decoy


def test_activations_are_the_state_direction_plus_the_fast_features():
    w = SlowStateWorld(SlowStateConfig(noise_std=0.0, state_scale=1.5))
    b = w.sample(8, generator=make_generator(1))
    rebuilt = 1.5 * w.state_directions[b.labels["shown"]] + b.labels["fast_acts"] @ w.fast.directions
    torch.testing.assert_close(b.inputs, rebuilt)
    torch.testing.assert_close(w.state_directions.norm(dim=1), torch.ones(4))
    again = SlowStateWorld(SlowStateConfig(noise_std=0.0, state_scale=1.5)).sample(8, generator=make_generator(1))
    assert torch.equal(b.inputs, again.inputs)
    assert isinstance(registry.make("slow_state"), SlowStateWorld)


def test_bad_configs():
    with pytest.raises(ConfigError, match="n_states must be at least 2"):
        SlowStateConfig(n_states=1)
    with pytest.raises(ConfigError, match="faithfulness"):
        SlowStateConfig(faithfulness=1.5)
    with pytest.raises(ConfigError, match="switch_probability"):
        SlowStateConfig(switch_probability=-0.1)
