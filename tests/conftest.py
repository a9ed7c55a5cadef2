"""Shared test setup: offline Hugging Face, few threads, a run-scoped cache dir."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def assay_cache(tmp_path_factory):
    """A per-run cache directory (set as ASSAY_CACHE so model conversions land there)."""
    path = os.environ.get("ASSAY_TEST_CACHE") or str(tmp_path_factory.mktemp("assay-cache"))
    os.environ["ASSAY_CACHE"] = path
    return path
