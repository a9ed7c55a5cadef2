"""The attribution family's worlds: a trained classifier per world and seed and the correctly classified
held-out examples it explains, with their true attribution masks (:mod:`assay.bench.attribution`).

``digits`` (Kindermans et al. 2019's signal–distractor digits: :class:`assay.worlds.digits.SignalDistractorDigits`)
and ``tabular`` (OpenXAI's Gaussian clusters: :class:`assay.worlds.tabular.TabularSignalWorld`), each with the
zoo's default classifier (:mod:`assay.models.classifier_zoo`); ``robust_eps`` swaps in a PGD-fine-tuned copy
(Madry et al. 2018) for DiET's robust-vs-standard comparison (Bhalla, Srinivas & Lakkaraju 2023).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from assay.bench.spec import parameter_defaults, parse_world_spec
from assay.config import ConfigError

if TYPE_CHECKING:
    from assay.bench.attribution import AttributionSettings

__all__ = ["WORLD_NAMES", "TOP_K", "EXAMPLE_SEED", "PROXY_SEED", "PreparedWorld", "world_parameters", "prepare_world",
           "robust_classifier"]

WORLD_NAMES = ("digits", "tabular")
"""Worlds with true attribution masks (and a default classifier in the zoo)."""

PROXY_SEED = 1_000
"""The GAN-test's proxy classifier trains with seed (the explained classifier's seed) + ``PROXY_SEED``."""

TOP_K = {"digits": 64, "tabular": 4}
"""Default k of the top-k precision per world (the world spec's ``top_k`` overrides it)."""

EXAMPLE_SEED = 20_000
"""Explained examples are drawn with seed ``EXAMPLE_SEED + seed`` (the classifier trains on draws of its
seed s and is tested on s + 10,000)."""


class PreparedWorld(NamedTuple):
    """One world and seed, ready to explain."""

    name: str
    """World name."""
    model: nn.Module
    """The trained classifier (eval mode)."""
    x: torch.Tensor
    """Explained examples (correctly classified, held out)."""
    mask: torch.Tensor
    """Their signal masks (bool, one entry per pixel or feature)."""
    target: torch.Tensor
    """Their labels (= the classifier's predictions)."""
    accuracy: float
    """The classifier's held-out accuracy."""
    top_k: int
    """k of the top-k precision."""
    sites: tuple[str, ...]
    """Sites of the randomisation test, top first."""
    proxy: nn.Module | None
    """The GAN-test's independently trained proxy classifier (images with ``gan_samples`` > 0), else None."""
    proxy_accuracy: float
    """The proxy's held-out accuracy (NaN without a proxy)."""


def world_parameters() -> dict[str, dict[str, Any]]:
    """Each world's parameters and their defaults: its world config's fields, ``top_k`` and ``robust_eps``."""
    from assay.worlds.digits import DigitsConfig
    from assay.worlds.tabular import TabularConfig

    return {name: {**parameter_defaults(cfg), "top_k": TOP_K[name], "robust_eps": 0.0}
            for name, cfg in (("digits", DigitsConfig), ("tabular", TabularConfig))}


def _world_parts(name: str, kw: dict[str, Any]) -> tuple[Any, Any]:
    """(world config or None for the default, the held-out world) of world ``name`` with spec ``kw``."""
    try:
        if name == "digits":
            from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

            cfg = DigitsConfig(**kw)
            return (cfg if kw else None), SignalDistractorDigits(dataclasses.replace(cfg, split="test"))
        from assay.worlds.tabular import TabularConfig, TabularSignalWorld

        tcfg = TabularConfig(**kw)
        return (tcfg if kw else None), TabularSignalWorld(tcfg)
    except TypeError as e:
        raise ConfigError(f"world {name!r}: {e}") from None


def robust_classifier(wc: Any, held_out: Any, eps: float, settings: AttributionSettings, recipe: Any, seed: int, *,
                      image: bool) -> Any:
    """A copy of the world classifier ``wc`` fine-tuned by PGD adversarial training (Madry et al. 2018,
    :func:`assay.robustness.adversarial.adversarial_fit`; L∞ ball ``eps``, pixels kept in [0, 1]) for the
    robust-vs-standard comparison of DiET (Bhalla, Srinivas & Lakkaraju 2023), with its held-out accuracy on the
    zoo's test draw."""
    import copy

    from assay.models.fit import accuracy
    from assay.robustness.adversarial import adversarial_fit
    from assay.worlds.base import make_generator

    train = wc.world.sample(settings.robust_n_train, generator=make_generator(seed))
    model = adversarial_fit(copy.deepcopy(wc.model), train.inputs, train.targets, eps=eps, steps=settings.robust_steps,
                            epochs=settings.robust_epochs, batch_size=recipe.batch_size, lr=1e-3,
                            bounds=(0.0, 1.0) if image else None, seed=seed)
    test = held_out.sample(recipe.n_test, generator=make_generator(seed + 10_000))
    return wc._replace(model=model, test_accuracy=accuracy(model, test.inputs, test.targets), trained=True)


def prepare_world(world: str, seed: int, settings: AttributionSettings) -> PreparedWorld:
    """Train (or load) the world's classifier and draw ``n_examples`` correctly classified held-out examples."""
    from assay.models.classifier_zoo import RECIPES, world_classifier
    from assay.worlds.base import make_generator

    name, kw = parse_world_spec(world, WORLD_NAMES)
    top_k = int(kw.pop("top_k", TOP_K[name]))
    robust_eps = float(kw.pop("robust_eps", 0.0))
    if not robust_eps >= 0:
        raise ConfigError(f"world {world!r}: robust_eps must be ≥ 0 (0: the standard classifier), got {robust_eps}")
    world_config, held_out = _world_parts(name, kw)
    budget = {"n_train": settings.n_train, "epochs": settings.epochs, "hidden": settings.hidden or None}
    recipe = dataclasses.replace(RECIPES[name], **{k: v for k, v in budget.items() if v is not None})
    model_seed = settings.model_seed + (seed if settings.model_per_seed else 0)
    wc = world_classifier(name, world_config=world_config, recipe=recipe, seed=model_seed)
    if robust_eps > 0:
        wc = robust_classifier(wc, held_out, robust_eps, settings, recipe, model_seed, image=name == "digits")
    g = make_generator(EXAMPLE_SEED + seed)
    xs, masks, ys = [], [], []
    n, draws = settings.n_examples, 0
    while sum(len(y) for y in ys) < n and draws < 8:  # 2n draws at a time until n are classified correctly
        batch = held_out.sample(2 * n, generator=g)
        with torch.no_grad():
            ok = wc.model(batch.inputs).argmax(1) == batch.targets
        xs.append(batch.inputs[ok])
        masks.append(batch.labels["signal_mask"][ok].bool())
        ys.append(batch.targets[ok])
        draws += 1
    x, mask, y = torch.cat(xs)[:n], torch.cat(masks)[:n], torch.cat(ys)[:n]
    if len(y) == 0:
        raise ConfigError(f"the {name} classifier (held-out accuracy {wc.test_accuracy:.3f}) classified none of "
                          f"{draws * 2 * n} examples correctly; train it longer (--options epochs=…, n_train=…)")
    if not 1 <= top_k <= mask[0].numel():
        raise ConfigError(f"world {world!r}: top_k must lie in 1..{mask[0].numel()}, got {top_k}")
    sites = tuple(site for site, m in reversed(list(wc.model.named_modules()))
                  if site and not list(m.children()) and any(True for _ in m.parameters(recurse=False)))
    if settings.randomise:
        unknown = [s for s in settings.randomise if s not in sites]
        if unknown:
            raise ConfigError(f"randomise: no parameterised sites {unknown} in the {name} classifier; "
                              f"choose from {', '.join(sites)}")
        sites = settings.randomise
    proxy = None
    if x.dim() == 4 and settings.gan_samples:
        proxy = world_classifier(name, world_config=world_config, recipe=recipe, seed=model_seed + PROXY_SEED)
    return PreparedWorld(name, wc.model, x, mask, y, wc.test_accuracy, top_k, sites,
                         proxy.model if proxy else None, proxy.test_accuracy if proxy else math.nan)
