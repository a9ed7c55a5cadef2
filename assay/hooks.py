"""Hooks: name a site in a model, capture, patch or stop at it.

A *site* is a module path such as ``"model.layers.3"`` or ``"blocks.2.mlp"``, resolved with
``nn.Module.get_submodule``. Every context manager here removes the hooks it placed in
``finally``, after success and after an exception alike.

Modules that return tuples (Hugging Face decoder/encoder layers) are handled by acting on the
first element, the hidden state; the rest of the tuple passes through unchanged.

``stop_at=site`` raises a private exception right after that site runs and ``model``'s own forward
catches it and returns ``None``, so ``with capture(model, [s], stop_at=s): model(x)`` costs only the
layers up to ``s`` and the rest of the ``with`` block runs as usual. The stop is caught only by the
``model`` passed in: calling it through an outer module (or calling something else that reaches the
site) raises :class:`StopOutsideModel` rather than silently skipping the rest of the block.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "SiteError",
    "StopOutsideModel",
    "resolve",
    "site_names",
    "capture",
    "patch",
    "ablate",
    "run_to",
]

PatchFn = Callable[[torch.Tensor], torch.Tensor]


class SiteError(KeyError):
    """A site name that does not name a submodule of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class _StopForward(Exception):
    """Raised after the ``stop_at`` site to end the forward pass early."""


class StopOutsideModel(RuntimeError):
    """A ``stop_at`` forward pass was stopped outside the model given to the context manager."""


def site_names(model: nn.Module) -> list[str]:
    """All valid site names of ``model`` (its named submodules, without the root)."""
    return [name for name, _ in model.named_modules() if name]


def resolve(model: nn.Module, site: str) -> nn.Module:
    """Return the submodule named ``site``; unknown names raise :class:`SiteError` with the closest
    valid names."""
    if not isinstance(site, str) or not site:
        raise SiteError(f"a site must be a non-empty module path such as 'layers.0', got {site!r}")
    try:
        return model.get_submodule(site)
    except AttributeError:
        names = site_names(model)
        close = difflib.get_close_matches(site, names, n=5, cutoff=0.5)
        if not close:  # fall back to names sharing the last component
            tail = site.rsplit(".", 1)[-1]
            close = [n for n in names if n.endswith("." + tail) or n == tail][:5]
        hint = f" Closest valid sites: {', '.join(close)}." if close else ""
        raise SiteError(
            f"model {type(model).__name__} has no submodule {site!r}.{hint} "
            f"List them all with assay.hooks.site_names(model)."
        ) from None


def _hidden(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (first element of a tuple/list)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(
        f"cannot find a tensor in a module output of type {type(output).__name__}; "
        "hook a submodule that returns a tensor or a tuple starting with one"
    )


def _replace_hidden(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot patch a module output of type {type(output).__name__}")


def _sites_list(sites: str | Iterable[str]) -> list[str]:
    return [sites] if isinstance(sites, str) else list(sites)


@contextmanager
def _hooked(
    model: nn.Module, hooks: Mapping[str, Callable[[nn.Module, Any, Any], Any]], stop_at: str | None
) -> Iterator[None]:
    """Register forward hooks by site; remove all of them in ``finally``. With ``stop_at``, ``model.forward``
    is wrapped for the duration so that the stop signal ends only the forward pass (which returns None)."""
    modules = {site: resolve(model, site) for site in hooks}
    stop_module = resolve(model, stop_at) if stop_at is not None else None
    handles = []
    own_forward = "forward" in model.__dict__  # an instance attribute to restore rather than delete
    saved_forward = model.__dict__.get("forward")
    stopped: list[bool] = []
    try:
        for site, fn in hooks.items():
            handles.append(modules[site].register_forward_hook(fn))
        if stop_module is not None:

            def _stop(module, args, output):
                raise _StopForward

            handles.append(stop_module.register_forward_hook(_stop))
            inner = model.forward

            def _forward_until_stop(*args, **kwargs):
                try:
                    return inner(*args, **kwargs)
                except _StopForward:
                    stopped.append(True)
                    return None

            model.forward = _forward_until_stop
        try:
            yield
        except _StopForward:
            raise StopOutsideModel(
                f"the forward pass was stopped at {stop_at!r} outside the forward of the "
                f"{type(model).__name__} given to the hook context, so the rest of the with block was not run. "
                "Call that same model inside the block (or pass the outer module you call as the model)."
            ) from None
        except Exception as err:
            if stopped:  # most likely an outer module choking on the stopped forward's None
                err.add_note(f"(assay.hooks: the forward of {type(model).__name__} was stopped at {stop_at!r} and "
                             "returned None; call that model itself inside the block, not a module around it)")
            raise
    finally:
        for h in handles:
            h.remove()
        if stop_module is not None:
            if own_forward:
                model.forward = saved_forward
            else:
                del model.forward


class Capture(dict):
    """Activations captured by :func:`capture`: ``site -> tensor`` (the last forward pass's value,
    or all of them concatenated along ``dim`` when ``accumulate=True``).

    Accumulated passes wait in a list and are joined into the stored value only when the site is read,
    so k passes read once cost one concatenation, not k."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self._dim = dim
        self._new: dict[str, list[torch.Tensor]] = {}  # passes not yet joined into the stored value

    def _add(self, site: str, h: torch.Tensor) -> None:
        if dict.__contains__(self, site):
            self._new.setdefault(site, []).append(h)
        else:
            dict.__setitem__(self, site, h)

    def _join(self, site: str) -> None:
        new = self._new.pop(site, None)
        if new:
            dict.__setitem__(self, site, torch.cat([dict.__getitem__(self, site), *new], self._dim))

    def __getitem__(self, site: str) -> torch.Tensor:
        self._join(site)
        return dict.__getitem__(self, site)

    def get(self, site, default=None):
        return self[site] if site in self else default

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


@contextmanager
def capture(
    model: nn.Module,
    sites: str | Iterable[str],
    *,
    stop_at: str | None = None,
    detach: bool = True,
    accumulate: bool = False,
    dim: int = 0,
) -> Iterator[Capture]:
    """Capture the outputs of ``sites`` during forward passes inside the ``with`` block.

    ``detach=False`` keeps the graph (for gradients through the captured tensor). With
    ``accumulate=True`` every forward pass is kept and the passes are joined along ``dim`` when read;
    otherwise each pass overwrites the previous value.
    """
    site_list = _sites_list(sites)
    out = Capture(dim)

    def make(site: str):
        def hook(module, args, output):
            h = _hidden(output)
            h = h.detach() if detach else h
            if accumulate:
                out._add(site, h)
            else:
                dict.__setitem__(out, site, h)

        return hook

    with _hooked(model, {s: make(s) for s in site_list}, stop_at):
        yield out


@contextmanager
def patch(
    model: nn.Module, edits: Mapping[str, PatchFn], *, stop_at: str | None = None
) -> Iterator[None]:
    """Replace each site's output ``h`` by ``fn(h)`` during forward passes inside the block.

    ``fn`` receives the hidden-state tensor (for tuple outputs, the first element) and must return a
    tensor of the same shape; the rest of a tuple output passes through unchanged.
    """

    def make(site: str, fn: PatchFn):
        def hook(module, args, output):
            h = _hidden(output)
            new = fn(h)
            if not isinstance(new, torch.Tensor) or new.shape != h.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(
                    f"patch function for site {site!r} must return a tensor of shape {tuple(h.shape)}, got {got}"
                )
            return _replace_hidden(output, new)

        return hook

    with _hooked(model, {s: make(s, fn) for s, fn in edits.items()}, stop_at):
        yield


def ablate(
    model: nn.Module,
    sites: str | Iterable[str],
    value: float | torch.Tensor | Mapping[str, torch.Tensor] = 0.0,
    *,
    stop_at: str | None = None,
):
    """Context manager: replace each site's output by ``value`` (zero ablation by default; pass a
    tensor broadcastable to the output, e.g. a mean activation, or a ``site -> tensor`` mapping)."""

    def make(site: str) -> PatchFn:
        v = value[site] if isinstance(value, Mapping) else value

        def fn(h: torch.Tensor) -> torch.Tensor:
            if isinstance(v, torch.Tensor):
                return v.to(dtype=h.dtype, device=h.device).expand_as(h).clone()
            return torch.full_like(h, float(v))

        return fn

    return patch(model, {s: make(s) for s in _sites_list(sites)}, stop_at=stop_at)


def run_to(model: nn.Module, site: str, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Run ``model(*args, **kwargs)`` only up to ``site`` and return that site's (detached) output."""
    with torch.no_grad(), capture(model, [site], stop_at=site) as cap:
        model(*args, **kwargs)
    if site not in cap:
        raise RuntimeError(f"site {site!r} did not run during the forward pass")
    return cap[site]
