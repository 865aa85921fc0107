#!/usr/bin/env bash
# CI's second job: prove the dependency floors. Installs the lowest versions pyproject.toml
# allows for the non-engine dependencies (openai, pydantic, tenacity, langchain-core,
# llama-index-core, langchain-classic: uv's lowest-direct resolution) into .venv-floor, then
# runs the remote, adapter and pure tests there. vLLM is not installed there: the main
# environment's Python (.venv, from ./scripts/setup.sh) builds the test models and runs the
# vLLM servers, and tests that need vLLM in the test process (marked "embedded") are left out.
# The test runner and the test-only libraries are pinned to the main environment's versions:
# this job proves the package's floors, not theirs. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

engine_python=${RANK1_TEST_ENGINE_PYTHON:-$PWD/.venv/bin/python}
if ! "$engine_python" -c "import vllm" 2>/dev/null; then
  echo "floor: $engine_python cannot import vllm; run ./scripts/setup.sh first" >&2
  exit 1
fi

floor=.venv-floor
stamp="$floor/.rank1-floor-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "floor: installing the lowest allowed versions into $floor"
  rm -rf "$floor"
  "${PYTHON:-python3}" -m venv "$floor"
  "$floor/bin/python" -m pip install -q uv 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  "$engine_python" -m pip freeze 2>/dev/null \
    | grep -iE '^(pytest|pytest-asyncio|pytest-timeout|tokenizers|transformers|cryptography|qwen[-_]tokenizer|llama[-_]models|mistral[-_]common)==' \
    >"$floor/tested-tools.txt"
  "$floor/bin/uv" pip install -q --python "$floor/bin/python" --resolution lowest-direct \
    --constraint "$floor/tested-tools.txt" -e ".[langchain,llama-index,test]"
  touch "$stamp"
fi

# The job proves nothing unless the floors are what got installed.
"$floor/bin/python" - <<'PY'
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.version import Version

def declared(requirement: Requirement) -> bool:
    if requirement.marker is None:
        return True  # the core dependencies
    in_extra = lambda extra: requirement.marker.evaluate({"extra": extra})  # noqa: E731
    return in_extra("langchain") or in_extra("llama-index") or requirement.name == "langchain-classic"

wrong = []
print("floor: package              declared floor  installed")
for requirement in filter(declared, map(Requirement, metadata.requires("rank1-integrations") or [])):
    floor = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
    installed = Version(metadata.version(requirement.name))
    print(f"floor: {requirement.name:20} {str(floor):15} {installed}")
    if installed != floor:
        wrong.append(requirement.name)
if wrong:
    sys.exit(f"floor: not installed at the declared floor: {', '.join(wrong)} (raise the floor to what resolves)")
PY

export RANK1_TEST_ENGINE_PYTHON="$engine_python" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
status=0
# rank1 serve and rank1 run stand on their own extras (serve, ray, eval), which this
# job does not install: their tests run in the main job only.
"$floor/bin/python" -m pytest -m "not embedded" --ignore-glob='tests/test_serve*' --ignore-glob='tests/test_batch*' "$@" \
  || status=$?
if [ "$status" -eq 5 ]; then
  echo "floor: pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
