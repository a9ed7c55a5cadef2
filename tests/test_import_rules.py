"""The layer rules (DESIGN.md §1): planted violations are caught, and the real tree keeps them.

The checker is tests/import_rules.py. Each rule is first shown to fire, with file and line, on a
tiny synthetic package with one planted violation; then the real `assay` tree must have no
violation except those in KNOWN_VIOLATIONS, and every listed one must still occur (the list can
only shrink).
"""

import textwrap
from pathlib import Path

import pytest
from import_rules import Violation, check, unknown_packages

import assay

ASSAY_ROOT = Path(assay.__file__).parent

# Today's violations as (rule, file, imported module), line numbers left out so that an edit elsewhere
# in the file does not break the test. Each is being moved by the architecture work; delete an entry
# when it is fixed.
KNOWN_VIOLATIONS: dict[tuple[str, str, str], str] = {}
"""(rule, file, imported module) → why it is tolerated for now. Empty: every rule holds."""


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A synthetic package `pkg` under tmp_path with the given files (relative path -> source)."""
    root = tmp_path / "pkg"
    for rel, source in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


_CLEAN = {
    "hooks.py": "import torch\n",
    "config.py": "from pkg import hooks\n",
    "worlds/__init__.py": "",
    "worlds/base.py": "from pkg.config import x\nfrom ..hooks import y\n",
    "lenses/__init__.py": "",
    "lenses/probe.py": "from pkg.worlds import base\n",
    "attribution/__init__.py": "from .engine import run\n",
    "attribution/engine.py": "from pkg.lenses import probe\n",
    "evaluate/__init__.py": "",
    "evaluate/metric.py": "from pkg import hooks\nfrom pkg.worlds.base import World\n",
    "bench/__init__.py": "",
    "bench/suite.py": "from pkg.attribution import engine\nfrom pkg.evaluate import metric\n",
    "cli/__init__.py": "from pkg.bench import suite\n",
    "__main__.py": "from pkg.cli import main\n",
    **{f"{layer}/leaf.py": "" for layer in ("worlds", "attribution", "evaluate", "cli")},  # import nothing
}


def test_a_clean_package_has_no_violation(tmp_path):
    assert check(_package(tmp_path, _CLEAN)) == []


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        (  # a method package imports bench, inside a function
            {"attribution/engine.py": "def run():\n    from pkg.bench.suite import go\n"},
            Violation("method->upper", "pkg/attribution/engine.py", 2, "pkg.bench.suite"),
        ),
        (  # a method package imports cli, relatively
            {"lenses/probe.py": "import os\nfrom ..cli import leaf\n"},
            Violation("method->upper", "pkg/lenses/probe.py", 2, "pkg.cli.leaf"),
        ),
        (  # evaluate imports a method package
            {"evaluate/metric.py": "\n\nimport pkg.lenses.probe\n"},
            Violation("evaluate->method", "pkg/evaluate/metric.py", 3, "pkg.lenses.probe"),
        ),
        (  # a floor imports a method package (`from package import module` names the module)
            {"config.py": "from pkg.attribution import leaf\n"},
            Violation("floor->above", "pkg/config.py", 1, "pkg.attribution.leaf"),
        ),
        (  # the data floor imports evaluate
            {"worlds/base.py": "x = 1\nfrom pkg.evaluate.leaf import score\n"},
            Violation("floor->above", "pkg/worlds/base.py", 2, "pkg.evaluate.leaf"),
        ),
        (  # a floor imports the data floor
            {"hooks.py": "from pkg.worlds import leaf\n"},
            Violation("floor->above", "pkg/hooks.py", 1, "pkg.worlds.leaf"),
        ),
        (  # a cycle of top-level imports: bench/a -> bench/b -> bench/a
            {"bench/a.py": "from pkg.bench.b import f\n", "bench/b.py": "\nfrom pkg.bench import a\n"},
            Violation("cycle", "pkg/bench/a.py", 1, "pkg.bench.a -> pkg.bench.b -> pkg.bench.a"),
        ),
        (  # a three-module cycle through relative imports
            {"cli/x.py": "from .y import f\n", "cli/y.py": "from . import z\n", "cli/z.py": "from .x import g\n"},
            Violation("cycle", "pkg/cli/x.py", 1, "pkg.cli.x -> pkg.cli.y -> pkg.cli.z -> pkg.cli.x"),
        ),
    ],
)
def test_a_planted_violation_is_reported_with_file_and_line(tmp_path, planted, expected):
    assert check(_package(tmp_path, {**_CLEAN, **planted})) == [expected]


def test_an_import_inside_a_function_or_type_checking_block_breaks_no_cycle(tmp_path):
    planted = {
        "bench/a.py": "from pkg.bench.b import f\n",
        "bench/b.py": "def f():\n    from pkg.bench import a\n",
        "bench/c.py": "from typing import TYPE_CHECKING\nfrom pkg.bench.a import f\n",
        "bench/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.bench import c\n",
    }
    assert check(_package(tmp_path, {**_CLEAN, **planted})) == []


def test_an_unassigned_top_level_package_is_listed(tmp_path):
    root = _package(tmp_path, {**_CLEAN, "newthing/__init__.py": "", "misc.py": ""})
    assert unknown_packages(root) == ["misc", "newthing"]


def test_every_top_level_module_of_assay_has_a_layer():
    assert unknown_packages(ASSAY_ROOT) == [], "add the new module to a layer in tests/import_rules.py"


def test_assay_keeps_the_layer_rules_except_the_known_violations():
    found = check(ASSAY_ROOT)
    new = [v for v in found if (v.rule, v.file, v.imported) not in KNOWN_VIOLATIONS]
    fixed = sorted(KNOWN_VIOLATIONS.keys() - {(v.rule, v.file, v.imported) for v in found})
    assert not new, "imports that break the layer rules (DESIGN.md §1):\n" + "\n".join(map(str, new))
    assert not fixed, (
        "these known violations no longer occur: delete them from KNOWN_VIOLATIONS:\n"
        + "\n".join(map(str, fixed))
    )
