"""Intervene on concepts through a lens, in a forward pass and during cached generation.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control:
Evaluation via Intervention" (arXiv 2411.04430): every method is an encoder E and a decoder D around
an activation h at a site; an intervention edits the concept code z = E(h) → z′ and continues with

    h′ = h + (D(z′) − D(z))                                                        (1)

— the reconstruction error h − D(E(h)) is kept, so an identity edit (z′ = z) changes nothing, and a
lossy lens (SAE, pseudo-inverse of an unembedding) does not corrupt the untouched part of h.

Positions. Each forward call of the model is seen with its *absolute* positions
``past_length + local_index`` (``past_length`` from ``cache_position`` / ``past_key_values`` of the
call, 0 without a cache), so "position p" or "the last prompt token" names the same token on every
generation step, whether the model recomputes the whole sequence or decodes one token at a time
with a KV cache (steering-vectors#60 and nrimsky/CAA#3 get this wrong). The *prompt* is the first
forward call inside the ``with`` block; use one block per ``generate`` call. Padding positions
(``attention_mask == 0`` of the call) are never edited.

Strength 0 returns the activation tensor itself (bitwise unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from assay.hooks import patch, resolve
from assay.lenses.protocol import Lens

__all__ = [
    "AllPositions",
    "At",
    "From",
    "LastPrompt",
    "Generated",
    "Selector",
    "Read",
    "Clamp",
    "Add",
    "Scale",
    "Ablate",
    "Edit",
    "CallInfo",
    "Reading",
    "Intervention",
    "positional_patch",
    "intervene",
    "apply_edit",
    "select",
]


# ----- position selectors ----------------------------------------------------------------------
@dataclass(frozen=True)
class AllPositions:
    """Every real (non-padding) position, prompt and generated."""


@dataclass(frozen=True)
class At:
    """Absolute positions; a negative position counts back from the end of the prompt
    (``At(-1)`` is the last prompt column, the same for every row under left padding)."""

    positions: tuple[int, ...]

    def __init__(self, *positions: int) -> None:
        if not positions:
            raise ValueError("At() needs at least one position, e.g. At(0) or At(-1)")
        object.__setattr__(self, "positions", tuple(int(p) for p in positions))


@dataclass(frozen=True)
class From:
    """Absolute positions ``>= start`` (negative: counted back from the end of the prompt)."""

    start: int = 0


@dataclass(frozen=True)
class LastPrompt:
    """The last real prompt token of each row (from the prompt's attention mask: right or left padding)."""


@dataclass(frozen=True)
class Generated:
    """Every position after the prompt (the generated tokens)."""


Selector = AllPositions | At | From | LastPrompt | Generated


# ----- edits -----------------------------------------------------------------------------------
Concepts = int | Sequence[int] | None


@dataclass(frozen=True, kw_only=True)
class _EditBase:
    concepts: Concepts = None
    """Concept index or indices the edit touches (None: every concept)."""
    positions: Selector = field(default_factory=AllPositions)
    """Which positions are edited."""
    strength: float = 1.0
    """Multiplier of the edit; 0 changes nothing (bitwise)."""

    def _index(self, n: int) -> Tensor | slice:
        if self.concepts is None:
            return slice(None)
        idx = [self.concepts] if isinstance(self.concepts, int) else list(self.concepts)
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise ValueError(f"{type(self).__name__}: concept index {bad} out of range for a lens with {n} concepts")
        return torch.tensor(idx, dtype=torch.long)


@dataclass(frozen=True, kw_only=True)
class Read(_EditBase):
    """Record the concept code at the selected positions; change nothing."""

    def new_code(self, z: Tensor) -> Tensor:
        return z


@dataclass(frozen=True, kw_only=True)
class Clamp(_EditBase):
    """z_c ← z_c + strength·(value − z_c): set the concept to ``value`` (partially when strength < 1)."""

    value: float | Tensor

    def new_code(self, z: Tensor) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        v = torch.as_tensor(self.value, dtype=z.dtype, device=z.device)
        out[..., i] = z[..., i] + self.strength * (v - z[..., i])
        return out


@dataclass(frozen=True, kw_only=True)
class Add(_EditBase):
    """z_c ← z_c + strength·amount."""

    amount: float | Tensor

    def new_code(self, z: Tensor) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] + self.strength * torch.as_tensor(self.amount, dtype=z.dtype, device=z.device)
        return out


@dataclass(frozen=True, kw_only=True)
class Scale(_EditBase):
    """z_c ← z_c·(1 + strength·(factor − 1))."""

    factor: float

    def new_code(self, z: Tensor) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] * (1.0 + self.strength * (self.factor - 1.0))
        return out


@dataclass(frozen=True, kw_only=True)
class Ablate(_EditBase):
    """z_c ← (1 − strength)·z_c (zero the concept at strength 1)."""

    def new_code(self, z: Tensor) -> Tensor:
        i = self._index(z.shape[-1])
        out = z.clone()
        out[..., i] = z[..., i] * (1.0 - self.strength)
        return out


Edit = Read | Clamp | Add | Scale | Ablate


def apply_edit(h: Tensor, lens: Lens, edit: Edit) -> tuple[Tensor, Tensor]:
    """Equation (1) on rows ``h [..., d]``: returns ``(h′, z)``; ``h′ is h`` when nothing changes."""
    z = lens.encode(h)
    if isinstance(edit, Read) or edit.strength == 0:
        return h, z
    z_new = edit.new_code(z)
    return h + (lens.decode(z_new) - lens.decode(z)), z


# ----- position bookkeeping ----------------------------------------------------------------------
class CallInfo(NamedTuple):
    """What a site hook knows about the current forward call."""

    positions: Tensor
    """Absolute positions of the call's columns ``[T]`` (long)."""
    real: Tensor
    """Non-padding columns ``[B, T]`` (bool)."""
    prompt_len: int
    """Length of the prompt (the first call in the block)."""
    last_prompt: Tensor
    """Column of the last real prompt token per row ``[B]`` (long)."""
    step: int
    """Index of this forward call in the block (0 = the prompt)."""


def _past_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    cp = kwargs.get("cache_position")
    if isinstance(cp, Tensor) and cp.numel():
        return int(cp.reshape(-1)[0])
    pkv = kwargs.get("past_key_values")
    if pkv is not None:
        if hasattr(pkv, "get_seq_length"):
            return int(pkv.get_seq_length())
        if isinstance(pkv, (tuple, list)) and pkv and isinstance(pkv[0], (tuple, list)):
            return int(pkv[0][0].shape[-2])
    return 0


class _Tracker:
    """Follows the root module's forward calls (pre-hook) and derives absolute positions."""

    def __init__(self, prompt_len: int | None) -> None:
        self.past = 0
        self.mask: Tensor | None = None
        self.prompt_len = prompt_len
        self.last_prompt: Tensor | None = None
        self.step = -1

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.past = _past_length(args, kwargs)
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
        self.step += 1

    def info(self, h: Tensor) -> CallInfo:
        if h.dim() < 3:
            raise ValueError(
                f"positional interventions need activations [batch, pos, d], got shape {tuple(h.shape)}; "
                "pick a site inside the sequence model"
            )
        B, T = h.shape[0], h.shape[1]
        if self.step < 0:  # root pre-hook did not run (site hooked on an inner model)
            self.step = 0
        pos = torch.arange(self.past, self.past + T, device=h.device)
        real = torch.ones(B, T, dtype=torch.bool, device=h.device)
        if self.mask is not None and self.mask.shape[0] == B and self.mask.shape[1] >= self.past + T:
            real = self.mask[:, self.past:self.past + T].to(device=h.device).bool()
        if self.prompt_len is None:
            self.prompt_len = self.past + T
        if self.last_prompt is None or self.last_prompt.shape[0] != B:
            pl = self.prompt_len
            if self.mask is not None and self.mask.shape[0] == B and self.mask.shape[1] >= pl:
                cols = torch.arange(pl, device=self.mask.device)
                m = self.mask[:, :pl].bool()
                self.last_prompt = torch.where(m, cols, -1).amax(1).to(h.device)
            else:
                self.last_prompt = torch.full((B,), pl - 1, dtype=torch.long, device=h.device)
        return CallInfo(pos, real, self.prompt_len, self.last_prompt, self.step)


def select(selector: Selector, info: CallInfo) -> Tensor:
    """Boolean ``[B, T]`` of the positions ``selector`` names in this call (padding excluded)."""
    pos, pl = info.positions, info.prompt_len
    B = info.real.shape[0]
    if isinstance(selector, AllPositions):
        cols = torch.ones_like(pos, dtype=torch.bool)
    elif isinstance(selector, At):
        want = torch.tensor([p if p >= 0 else pl + p for p in selector.positions], device=pos.device)
        cols = (pos[:, None] == want[None, :]).any(1)
    elif isinstance(selector, From):
        start = selector.start if selector.start >= 0 else pl + selector.start
        cols = pos >= start
    elif isinstance(selector, Generated):
        cols = pos >= pl
    elif isinstance(selector, LastPrompt):
        return (pos[None, :] == info.last_prompt[:, None]) & info.real
    else:
        raise TypeError(f"unknown position selector {selector!r}; use AllPositions, At, From, LastPrompt or Generated")
    return cols[None, :].expand(B, -1) & info.real


PositionalFn = Callable[[Tensor, CallInfo], Tensor]


@contextmanager
def positional_patch(
    model: nn.Module, edits: dict[str, PositionalFn], *, prompt_len: int | None = None
) -> Iterator[list[CallInfo]]:
    """Like :func:`assay.hooks.patch`, but each ``fn(h, info)`` also receives the call's absolute
    positions (:class:`CallInfo`). Yields the list of ``CallInfo`` of the calls seen (one per site call)."""
    for site in edits:
        resolve(model, site)
    tracker = _Tracker(prompt_len)
    calls: list[CallInfo] = []

    def make(fn: PositionalFn):
        def hook_fn(h: Tensor) -> Tensor:
            info = tracker.info(h)
            calls.append(info)
            return fn(h, info)

        return hook_fn

    handle = model.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True)
    try:
        with patch(model, {s: make(fn) for s, fn in edits.items()}):
            yield calls
    finally:
        handle.remove()


class Reading(NamedTuple):
    """The concept code read at one forward call."""

    z: Tensor
    """Codes at the selected positions ``[n_selected, n_concepts]`` (before the edit)."""
    selected: Tensor
    """Which ``[B, T]`` positions of the call were selected (bool)."""
    positions: Tensor
    """Absolute positions of the call's columns ``[T]``."""


@dataclass
class Intervention:
    """Handle yielded by :func:`intervene`: the codes read at each forward call."""

    readings: list[Reading] = field(default_factory=list)


def _check_lens(lens: Any) -> None:
    if not (callable(getattr(lens, "encode", None)) and callable(getattr(lens, "decode", None))):
        raise TypeError(f"{type(lens).__name__} is not a Lens: it needs encode(h) and decode(z) methods")


@contextmanager
def intervene(
    model: nn.Module, site: str, lens: Lens, edit: Edit, *, prompt_len: int | None = None
) -> Iterator[Intervention]:
    """Apply ``edit`` to ``lens``'s concepts at ``site`` during every forward pass in the block
    (plain calls and ``generate`` with or without a KV cache), by equation (1).

    Example::

        with intervene(model, "model.layers.3", sae, Clamp(concepts=17, value=5.0, positions=LastPrompt())):
            out = model.generate(ids, max_new_tokens=20, do_sample=False)
    """
    _check_lens(lens)
    handle = Intervention()

    def fn(h: Tensor, info: CallInfo) -> Tensor:
        if torch.is_floating_point(h) and not torch.isfinite(h).all():
            raise ValueError(f"non-finite activations (NaN/inf) at site {site!r}; the intervention cannot proceed")
        sel = select(edit.positions, info)
        if not sel.any():
            return h
        rows = h[sel]
        new_rows, z = apply_edit(rows, lens, edit)
        handle.readings.append(Reading(z.detach(), sel, info.positions))
        if new_rows is rows:
            return h
        if new_rows.shape != rows.shape:
            raise ValueError(f"lens decode returned shape {tuple(new_rows.shape)}, expected {tuple(rows.shape)}")
        out = h.clone()
        out[sel] = new_rows.to(h.dtype)
        return out

    with positional_patch(model, {site: fn}, prompt_len=prompt_len):
        yield handle
