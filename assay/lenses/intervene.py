"""The one intervention path: edit a lens's concepts at sites of a model, in a forward pass and during
cached generation, at chosen positions, with a strength that may follow a schedule over generation steps.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control:
Evaluation via Intervention" (arXiv 2411.04430): every method is an encoder E and a decoder D around
an activation h at a site; an intervention edits the concept code z = E(h) → z′ and continues with

    h′ = h + (D(z′) − D(z))                                                        (1)

(the Lens protocol, the edits and equation (1) are the floor :mod:`assay.lens`). Steering vectors
(:func:`assay.lenses.steering.steer`) and manifold steering (:func:`assay.lenses.manifold.steer_along`)
are short wrappers over :func:`intervene`; the strength-0 shortcut, position selection, schedules and
the finiteness check live here once.

Positions. Each forward call of the model is seen with its *absolute* positions
``past_length + local_index`` (``past_length`` from ``cache_position`` / ``past_key_values`` of the
call, 0 without a cache), so "position p" or "the last prompt token" names the same token on every
generation step, whether the model recomputes the whole sequence or decodes one token at a time
with a KV cache (steering-vectors#60 and nrimsky/CAA#3 get this wrong). The *prompt* is the first
forward call inside the ``with`` block; use one block per ``generate`` call. Padding positions
(``attention_mask == 0`` of the call) are never edited.

Schedules. A schedule maps the generation step t = position − prompt length of each column (negative
in the prompt) to a multiplier of the edit's strength, e.g. :func:`linear_decay`.

Strength 0 returns the activation tensor itself (bitwise unchanged), at every site and step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from assay.hooks import patch, resolve
from assay.lens import Edit, Lens, apply_edit, check_lens

__all__ = [
    "AllPositions",
    "At",
    "From",
    "LastPrompt",
    "Generated",
    "Selector",
    "Schedule",
    "linear_decay",
    "CallInfo",
    "Reading",
    "Intervention",
    "positional_patch",
    "intervene",
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


# ----- schedules -------------------------------------------------------------------------------
Schedule = Callable[[Tensor], Tensor]
"""Maps generation steps ``[T]`` (position − prompt length: negative in the prompt) to strength multipliers ``[T]``."""


def linear_decay(n_steps: int) -> Schedule:
    """Schedule: 1 on the prompt, then 1 − t/n_steps for generated token t (0 from t = n_steps)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")

    def schedule(steps: Tensor) -> Tensor:
        return (1 - steps.clamp(min=0).float() / n_steps).clamp(min=0)

    return schedule


# ----- the intervention ------------------------------------------------------------------------
class Reading(NamedTuple):
    """The concept code read at one site in one forward call."""

    site: str
    """The site the code was read at."""
    z: Tensor
    """Codes at the selected positions ``[n_selected, n_concepts]`` (before the edit)."""
    selected: Tensor
    """Which ``[B, T]`` positions of the call were selected (bool)."""
    positions: Tensor
    """Absolute positions of the call's columns ``[T]``."""


@dataclass
class Intervention:
    """Handle yielded by :func:`intervene`: the codes read at each site call (empty with ``record=False``)."""

    readings: list[Reading] = field(default_factory=list)


SiteEdits = Mapping[str, tuple[Lens | None, Edit]]


def _plan(site: str | SiteEdits, lens: Lens | None, edit: Edit | None) -> dict[str, tuple[Lens | None, Edit]]:
    """``{site: (lens, edit)}`` from either call form, validated."""
    if isinstance(site, str):
        if edit is None:
            raise TypeError("intervene(model, site, lens, edit) needs an edit, e.g. Add(concepts=3, amount=2.0)")
        plan = {site: (lens, edit)}
    elif isinstance(site, Mapping):
        if lens is not None or edit is not None:
            raise TypeError("give either intervene(model, site, lens, edit) or intervene(model, {site: (lens, edit)}), "
                            "not a mapping together with lens/edit")
        plan = dict(site)
    else:
        raise TypeError(f"site must be a site name or a mapping {{site: (lens, edit)}}, got {type(site).__name__}")
    if not plan:
        raise ValueError("intervene needs at least one site")
    for name, pair in plan.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"site {name!r}: expected a (lens, edit) pair, got {pair!r}")
        check_lens(pair[0])
        if not isinstance(pair[1], Edit):
            raise TypeError(f"site {name!r}: {pair[1]!r} is not an edit; use Read, Set, Clamp, Add, Scale or Ablate "
                            "from assay.lens")
    return plan


@contextmanager
def intervene(
    model: nn.Module,
    site: str | SiteEdits,
    lens: Lens | None = None,
    edit: Edit | None = None,
    *,
    positions: Selector | None = None,
    schedule: Schedule | None = None,
    normalize: bool = False,
    check_finite: bool = False,
    record: bool = True,
    prompt_len: int | None = None,
) -> Iterator[Intervention]:
    """Apply ``edit`` to ``lens``'s concepts at ``site`` by equation (1) during every forward pass in the
    block (plain calls and ``generate`` with or without a KV cache). ``lens=None`` edits the activations
    themselves. Several sites: ``intervene(model, {site: (lens, edit), ...})``.

    ``positions``: which absolute positions are edited (default :class:`AllPositions`).
    ``schedule``: multiplies the strength per generation step (see the module docstring).
    ``normalize``: rescale every edited row to its norm before the edit (repeng's ``normalize``).
    ``check_finite``: raise at the first site whose activations hold NaN or inf. Off by default: the
    check costs a device sync per hooked call, and a NaN reaches the model's output anyway; turn it on
    to learn which site it came from.
    ``record``: keep the code read at each site call in the yielded :class:`Intervention`'s
    ``readings`` (turn off for long generations with wide lenses: the readings accumulate).
    ``prompt_len``: the prompt's length, when the first forward call in the block is not the prompt.

    Example::

        with intervene(model, "model.layers.3", sae, Clamp(concepts=17, value=5.0), positions=LastPrompt()):
            out = model.generate(ids, max_new_tokens=20, do_sample=False)
    """
    plan = _plan(site, lens, edit)
    selector = positions if positions is not None else AllPositions()
    handle = Intervention()

    def make(name: str, lens: Lens | None, edit: Edit) -> PositionalFn:
        idle = edit.changes_nothing

        def fn(h: Tensor, info: CallInfo) -> Tensor:
            if idle and not record:
                return h
            if check_finite and torch.is_floating_point(h) and not torch.isfinite(h).all():
                raise ValueError(f"non-finite activations (NaN/inf) at site {name!r}; the intervention cannot proceed")
            sel = select(selector, info)
            if not sel.any():
                return h
            rows = h[sel]
            scale = None
            if schedule is not None and not idle:
                steps = info.positions - info.prompt_len
                mult = schedule(steps)
                if mult.shape != steps.shape:
                    raise ValueError(f"a schedule must return one multiplier per position {tuple(steps.shape)}, "
                                     f"got shape {tuple(mult.shape)}")
                scale = mult.to(device=h.device, dtype=h.dtype)[None, :].expand(sel.shape)[sel][:, None]
            try:
                new_rows, z = apply_edit(rows, lens, edit, scale=scale)
            except ValueError as err:
                err.add_note(f"(at site {name!r})")
                raise
            if record:
                handle.readings.append(Reading(name, z.detach(), sel, info.positions))
            if new_rows is rows:
                return h
            if new_rows.shape != rows.shape:
                raise ValueError(f"lens decode at site {name!r} returned shape {tuple(new_rows.shape)}, "
                                 f"expected {tuple(rows.shape)}")
            if normalize:
                new_rows = new_rows * (rows.norm(dim=-1, keepdim=True) / new_rows.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            out = h.clone()
            out[sel] = new_rows.to(h.dtype)
            return out

        return fn

    with positional_patch(model, {name: make(name, *pair) for name, pair in plan.items()}, prompt_len=prompt_len):
        yield handle
