"""The README's tour runs as written (on the real SmolLM2-135M) and does what its comments say."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## A short tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the tour should hold exactly one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_tour_runs_as_written(smollm2):  # the fixture converts SmolLM2 once per run into $ASSAY_CACHE
    ns: dict = {}
    exec(compile(_tour(), str(README), "exec"), ns)
    model, input_ids, h, logits = ns["model"], ns["input_ids"], ns["h"], ns["logits"]
    T = input_ids.shape[1]
    assert T > 1 and h.shape == (1, T, 576) and logits.shape == (1, T, model.config.vocab_size)
    # independent of assay.hooks: Hugging Face's own hidden states (index 0 is the embedding output)
    with torch.no_grad():
        ref = model(input_ids, output_hidden_states=True)
    torch.testing.assert_close(h, ref.hidden_states[4])
    assert not torch.allclose(logits, ref.logits, atol=1e-3)  # the patch changed the output ...
    assert all(not m._forward_hooks for m in model.modules())  # ... and left no hook behind
