"""Models: real offline models (``load``) and tiny models trained on worlds (``world_model``).

Both entry points import their implementation on call, so importing ``assay.models`` is free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load", "world_model"]


def load(name: str, **kwargs: Any) -> Any:
    """Load a real offline model by name (``"smollm2-135m"``, ``"minilm-l6"``, ``"efficientnet-lite0"``) or any
    local Hugging Face model folder saved with safetensors (a path). See :func:`assay.models.offline.load`."""
    from assay.models.offline import load as _load

    return _load(name, **kwargs)


def world_model(world: str, **kwargs: Any) -> Any:
    """The default tiny model for a world, trained on first use and cached as an artifact.
    See :func:`assay.models.zoo.world_model`."""
    from assay.models.zoo import world_model as _world_model

    return _world_model(world, **kwargs)
