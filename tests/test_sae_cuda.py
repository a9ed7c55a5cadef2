"""SAE training on CUDA: three trainer steps of a TopK SAE (sparse kernels, AuxK active) on the GPU give
the CPU run's weights. Marked ``cuda``: skipped without a CUDA device (benchmarks/gpu_check.sh runs it)."""

import pytest
import torch

from assay.dictionaries.registry import build_sae
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

pytestmark = pytest.mark.cuda


def _train(device):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 32, generator=g) + 1.0).to(device) for _ in range(3)]
    sae = build_sae("topk", d_in=32, d_sae=256, k=2, seed=0).to(device)
    trainer = SAETrainer(sae, SAETrainConfig(steps=3, warmup_steps=1, lr=1e-2, dead_window=64))
    trainer.fit(batches)
    return trainer


def test_topk_sae_training_on_cuda_equals_cpu():
    cpu, gpu = _train("cpu"), _train("cuda")  # TF32 products are off by default: fp32 as on the CPU
    assert gpu.last[0]["dead"] > 0  # AuxK ran
    for (name, a), b in zip(cpu.saes[0].state_dict().items(), gpu.saes[0].state_dict().values()):
        assert b.device.type == "cuda", name
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-3, msg=name)
