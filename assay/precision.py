"""Mixed precision: running a forward pass under ``torch.autocast`` in bfloat16 (or float16), on CPU or GPU.

Micikevicius et al. 2018, "Mixed Precision Training" (ICLR 2018): the weights (and, in training, the optimizer
state and the gradient update) stay in float32, while matrix products run in a 16-bit type; bfloat16 (Kalamkar
et al. 2019, "A Study of BFLOAT16 for Deep Learning Training") keeps float32's exponent range, so it needs no
loss scaling. ``torch.autocast`` picks per operation: matmuls and linear layers in the low type, reductions,
norms and losses in float32. A bfloat16 product carries 8 significant bits, a relative rounding error of up to
2⁻⁸ ≈ 0.4% per input, so autocast results agree with float32 to about 1% (more after many layers).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

from assay.config import ConfigError

__all__ = ["AutocastDtype", "AUTOCAST_DTYPES", "autocast", "check_autocast_dtype"]

AutocastDtype = Literal["bfloat16", "float16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
"""The autocast dtypes by name."""


def check_autocast_dtype(dtype: str | None) -> None:
    """Raise :class:`~assay.config.ConfigError` (a ``ValueError``) unless ``dtype`` is None or a name in
    :data:`AUTOCAST_DTYPES`."""
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast_dtype must be one of {sorted(AUTOCAST_DTYPES)} or None (no autocast), "
                         f"got {dtype!r}")


def autocast(device: torch.device | str, dtype: str | None) -> AbstractContextManager[object]:
    """``torch.autocast`` on ``device``'s type in ``dtype`` (a name of :data:`AUTOCAST_DTYPES`), or a context
    that does nothing when ``dtype`` is None."""
    check_autocast_dtype(dtype)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[dtype])
