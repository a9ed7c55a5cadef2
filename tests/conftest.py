"""Shared test setup: offline Hugging Face, few threads, a run-scoped cache dir."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip on a machine without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device: run benchmarks/gpu_check.sh on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on tiny tensors a second OpenMP thread only adds barrier waits
    (measured up to 15x slower on the shared 2-core machine). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def assay_cache(tmp_path_factory):
    """A per-run cache directory (set as ASSAY_CACHE so model conversions land there)."""
    path = os.environ.get("ASSAY_TEST_CACHE") or str(tmp_path_factory.mktemp("assay-cache"))
    os.environ["ASSAY_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def smollm2(assay_cache):
    """SmolLM2-135M-Instruct (LoadedModel), converted from its GGUF once per run into ``assay_cache``."""
    from assay.models.offline import load

    return load("smollm2-135m", cache_dir=assay_cache)


@pytest.fixture(scope="session")
def minilm(assay_cache):
    """all-MiniLM-L6-v2 sentence encoder (LoadedModel, eager attention)."""
    from assay.models.offline import load

    return load("minilm-l6", cache_dir=assay_cache)


@pytest.fixture(scope="session")
def efficientnet(assay_cache):
    """EfficientNet-Lite0 ImageNet classifier (LoadedModel), its weights cached as safetensors once per run."""
    from assay.models.offline import load

    return load("efficientnet-lite0", cache_dir=assay_cache)


@pytest.fixture(scope="module")
def llama():
    """A tiny randomly initialised Hugging Face Llama (2 layers, d_model 32, vocab 64), seeded."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).eval()
