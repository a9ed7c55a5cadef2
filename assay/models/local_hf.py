"""Any local Hugging Face model folder saved with safetensors: ``assay.models.load("path/to/dir")``.

A folder written by ``save_pretrained(..., safe_serialization=True)`` (``config.json`` plus
``model.safetensors`` or a sharded ``model.safetensors.index.json``) loads as the class its config names
(``architectures[0]``, e.g. ``LlamaForCausalLM``, ``GPTNeoXForCausalLM``, ``BertModel``; otherwise
``AutoModelForCausalLM`` for a causal-LM config and ``AutoModel`` for anything else), in the dtype it was
saved in unless one is asked for, and with ``device_map`` when ``accelerate`` is importable. Remote code is
never run (``trust_remote_code`` stays off) and nothing is downloaded.

**Never pickle.** ``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt`` are Python pickles:
loading one runs whatever code it names. A folder without safetensors weights is refused, naming its
pickle files; a folder with both loads only the safetensors (``use_safetensors=True``).

**Sites without a per-architecture table.** The residual-stream sites (block outputs) are the entries of
the module list with as many entries as the config's ``num_hidden_layers`` (``model.layers.i``,
``gpt_neox.layers.i``, ``encoder.layer.i``, ...), found by walking ``named_modules``; any other module
path works with :mod:`assay.hooks` as for every model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assay.models.offline import _dtype_kwargs, _import_transformers

__all__ = ["PICKLE_SUFFIXES", "UnsafeWeightsError", "is_model_path", "load_local", "block_sites"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""File endings of pickled weights, which assay refuses to load."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
CONVERT_HINT = ("convert it once, in an environment you trust, with "
                "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`")


class UnsafeWeightsError(ValueError):
    """A model folder whose weights are not safetensors (missing, or pickle files, which are never loaded)."""


def is_model_path(name: str | os.PathLike[str]) -> bool:
    """True when ``name`` names a filesystem path rather than an offline model name: a ``Path``, a string
    containing a path separator or starting with ``.`` or ``~``, or an existing file or folder."""
    if isinstance(name, os.PathLike):
        return True
    s = str(name)
    return os.sep in s or "/" in s or s.startswith((".", "~")) or Path(s).exists()


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def _check_folder(path: Path) -> None:
    """Raise a clear error unless ``path`` is a folder with ``config.json`` and safetensors weights."""
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise UnsafeWeightsError(
                f"{path} is a pickle file; assay never loads pickles (unpickling runs arbitrary code stored in "
                f"the file). Give a model folder with safetensors weights; {CONVERT_HINT}")
        raise ValueError(f"{path} is a file; --model takes a Hugging Face model folder (config.json + *.safetensors)")
    if not path.is_dir():
        raise ValueError(f"model folder {path} does not exist; give an offline model name or a folder written by "
                         "save_pretrained(..., safe_serialization=True)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; it is not a Hugging Face model folder (write one with "
                         "model.save_pretrained(dir, safe_serialization=True))")
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        return
    pickles = _pickles(path)
    found = (f"; it holds {', '.join(pickles)}: pickle files, which assay refuses because unpickling runs arbitrary "
             "code stored in the file") if pickles else ""
    raise UnsafeWeightsError(f"{path} has no safetensors weights (model.safetensors or model.safetensors.index.json)"
                             f"{found}. {CONVERT_HINT[0].upper()}{CONVERT_HINT[1:]}.")


def _model_class(transformers: Any, config: Any) -> Any:
    """The class named by the config's ``architectures``, else the causal-LM or base auto class."""
    for arch in config.architectures or ():
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return transformers.AutoModelForCausalLM if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else transformers.AutoModel


def block_sites(model: nn.Module, n_layers: int | None) -> tuple[str, ...]:
    """``("<list>.0", ..., "<list>.{n-1}")`` for the first module list with ``n_layers`` entries (the
    transformer blocks), else for the longest module list; ``()`` if the model has none."""
    lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) and name]
    if not lists:
        return ()
    exact = [entry for entry in lists if entry[1] == n_layers]
    name, n = exact[0] if exact else max(lists, key=lambda entry: entry[1])
    return tuple(f"{name}.{i}" for i in range(n))


def load_local(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None,
    device: str | torch.device,
    attn_implementation: str | None,
) -> tuple[nn.Module, Any, tuple[str, ...]]:
    """``(model in eval mode, tokenizer or None, block sites)`` from a local safetensors model folder.

    ``dtype=None`` keeps the saved dtype. ``device`` may be ``"auto"`` (spread over the visible GPUs) when
    ``accelerate`` is installed.
    """
    folder = Path(path).expanduser()
    _check_folder(folder)
    transformers = _import_transformers(f"load({str(path)!r})")
    has_accelerate = importlib.util.find_spec("accelerate") is not None
    if str(device) == "auto" and not has_accelerate:
        raise ValueError("device='auto' (spreading a model over devices) needs the package accelerate; "
                         "pip install accelerate, or give a device such as cpu or cuda:0")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = _model_class(transformers, config)
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True,
                              **_dtype_kwargs("auto" if dtype is None else dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if has_accelerate:
        kwargs["device_map"] = str(device)
    model = cls.from_pretrained(folder, **kwargs)
    if not has_accelerate:
        model = model.to(device)
    tokenizer = None
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer, block_sites(model, getattr(config, "num_hidden_layers", None))
