"""Registry of worlds: name → (config class, world class), imported lazily.

``get("dyck")`` imports ``assay.worlds.dyck`` only when asked, so listing worlds costs nothing and a
half-written world module cannot break the others. ``make(name, **overrides)`` builds a world from
its default config with fields overridden. Used by ``assay world …`` and by the model zoo.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, NamedTuple

from assay.config import ConfigError, from_dict

__all__ = ["WORLDS", "WorldEntry", "names", "get", "make", "register"]

WORLDS: dict[str, str] = {
    "superposition": "assay.worlds.superposition:SuperpositionConfig/SuperpositionWorld",
    "digits": "assay.worlds.digits:DigitsConfig/SignalDistractorDigits",
    "tabular": "assay.worlds.tabular:TabularConfig/TabularSignalWorld",
    "dyck": "assay.worlds.dyck:DyckConfig/DyckWorld",
    "expr": "assay.worlds.pcfg:ExprConfig/ExprWorld",
    "english": "assay.worlds.pcfg:EnglishConfig/EnglishWorld",
    "markov": "assay.worlds.markov:MarkovConfig/MarkovMixtureWorld",
    "bijections": "assay.worlds.bijections:BijectionsConfig/BijectionsWorld",
    "graph": "assay.worlds.graph:GraphConfig/GraphWorld",
    "cyclic": "assay.worlds.cyclic:CyclicConfig/CyclicWorld",
    "gaussian_mixture": "assay.worlds.manifold:GaussianMixtureConfig/GaussianMixtureWorld",
    "subspace": "assay.worlds.manifold:SubspaceManifoldConfig/SubspaceManifoldWorld",
    "sparse_teacher": "assay.worlds.sparse_teacher:SparseTeacherConfig/SparseTeacherWorld",
    "two_modality": "assay.worlds.two_modality:TwoModalityConfig/TwoModalityWorld",
    "slow_state": "assay.worlds.slow_state:SlowStateConfig/SlowStateWorld",
    "random_binary": "assay.worlds.random_binary:RandomBinaryConfig/RandomBinaryWorld",
    "matrix_completion": "assay.worlds.matrix_completion:MatrixCompletionConfig/MatrixCompletionWorld",
    "graph_trace": "assay.worlds.graph_trace:GraphTraceConfig/GraphTraceWorld",
    "concept_clusters": "assay.worlds.concept_clusters:ConceptClustersConfig/ConceptClustersWorld",
    "contamination": "assay.worlds.contamination:ContaminatedMarkovConfig/ContaminatedMarkovWorld",
    "knowledge_graph": "assay.worlds.knowledge_graph:KnowledgeGraphConfig/KnowledgeGraphWorld",
    "pcsg": "assay.worlds.pcsg:PCSGConfig/PCSGWorld",
}
"""World name → ``"module:ConfigClass/WorldClass"``."""


class WorldEntry(NamedTuple):
    """A registered world's classes."""

    config_cls: type
    """The frozen config dataclass."""
    world_cls: type
    """The world class; ``world_cls(config)`` builds the world."""


def names() -> tuple[str, ...]:
    """Registered world names, in registration order."""
    return tuple(WORLDS)


def register(name: str, path: str) -> None:
    """Add (or replace) a world: ``path`` is ``"package.module:ConfigClass/WorldClass"``."""
    module, sep, classes = path.partition(":")
    if not sep or classes.count("/") != 1 or not module:
        raise ValueError(f"world path must look like 'pkg.module:Config/World', got {path!r}")
    WORLDS[name] = path


def get(name: str) -> WorldEntry:
    """Import and return the config and world classes registered under ``name``."""
    if name not in WORLDS:
        raise KeyError(f"unknown world {name!r}; registered worlds: {', '.join(WORLDS)}")
    module, _, classes = WORLDS[name].partition(":")
    cfg_name, world_name = classes.split("/")
    mod = importlib.import_module(module)
    return WorldEntry(getattr(mod, cfg_name), getattr(mod, world_name))


def make(name: str, config: Any = None, **overrides: Any) -> Any:
    """Build world ``name`` from ``config`` (default: the config class's defaults) with ``overrides``."""
    entry = get(name)
    if config is None:
        config = from_dict(entry.config_cls, overrides)
    elif overrides:
        if not isinstance(config, entry.config_cls):
            raise ConfigError(f"config for {name!r} must be a {entry.config_cls.__name__}")
        config = dataclasses.replace(config, **overrides)
    return entry.world_cls(config)
