#!/usr/bin/env bash
# GPU check: one command (under 5 minutes on a GPU) that runs the tests marked `cuda` (the sparse TopK
# kernels against their eager references on CUDA, SAE training on CUDA against the CPU) and prints
# caching tokens/s and SAE training samples/s on the GPU. Needs a CUDA build of torch and, for the
# caching figure, SmolLM2-135M available offline (as for benchmarks/cache_overhead.py).
#
#   benchmarks/gpu_check.sh            # uses .venv/bin/python, or $PYTHON
#
# Not yet run on a GPU (see docs/benchmarks.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! command -v "$PY" >/dev/null; then
    echo "no Python at $PY: make the venv (make test), or set PYTHON=/path/to/python with a CUDA build of torch" >&2
    exit 2
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device: run this on a GPU machine (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?') with $PY sees none)" >&2
    exit 2
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

echo "== tests marked cuda"
"$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_dict_sparse.py tests/test_sae_cuda.py

echo "== caching tokens/s (SmolLM2-135M, model.layers.3)"
"$PY" benchmarks/cache_overhead.py --device cuda --windows 512 --batch-size 32 --repeats 3

echo "== SAE training samples/s (TopK, d 576, 4608 latents, k 32)"
"$PY" benchmarks/sae_throughput.py --device cuda --steps 60 --warmup 10 --batch 4096
