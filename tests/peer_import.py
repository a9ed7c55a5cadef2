"""Import a peer library for a parity test.

Locally a missing peer skips the test; under ``make test`` (which installs the ``peers`` extra and
sets ``ASSAY_REQUIRE_PEERS=1``) a missing peer fails it, so CI never silently skips a parity check.
"""

import importlib
import os

import pytest


def peer(module: str):
    """Import ``module`` or skip (fail when ASSAY_REQUIRE_PEERS=1)."""
    if os.environ.get("ASSAY_REQUIRE_PEERS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
