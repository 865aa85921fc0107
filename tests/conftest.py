"""Shared fixtures: offline test models and real vLLM engines on CPU.

Engines start in-process with the fast CPU settings from the shared vLLM notes;
models are built by the tests themselves (nothing is downloaded).

Client-only runs (CI's floor job, ``scripts/test-floor.sh``): this process has the lowest
allowed versions of the client libraries and no vLLM. ``RANK1_TEST_ENGINE_PYTHON`` names a
Python that has vLLM; it builds the test models and runs the vLLM servers, and tests that
need an engine in this process are marked ``embedded`` (and deselected there).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm_server import engine_python

_REPO = Path(__file__).resolve().parent.parent
_CACHE = Path(os.environ.get("RANK1_TEST_CACHE", _REPO / ".cache" / "tests"))

# Must be set before vLLM is imported anywhere in the test process.
for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CACHE_ROOT": str(_CACHE / "vllm"),
    "TORCHINDUCTOR_CACHE_DIR": str(_CACHE / "inductor"),
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

# Fixtures shared by the adapter tests (reranker, truth) live beside their helpers.
pytest_plugins = ["tests.adapter_support"]

IN_PROCESS_ENGINE = importlib.util.find_spec("vllm") is not None
"""Whether vLLM can run in this process; without it the adapter tests judge on a vLLM server."""
_NEEDS_AN_ENGINE_HERE = frozenset({"scripted_reranker", "random_reranker"})

ENGINE_KWARGS = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024, "seed": 0}
"""Fast, deterministic CPU engine settings used by every engine test."""

SCRIPTED_BUDGET = 40
"""Reasoning budget of ``scripted_reranker``: the scripted short answers fit, OPEN_REASONING does not."""


@pytest.fixture(scope="session")
def model_cache() -> Path:
    _CACHE.mkdir(parents=True, exist_ok=True)
    return _CACHE


@pytest.fixture(scope="session")
def tokenizer_dir(model_cache: Path) -> Path:
    from rank1_integrations.testing.tiny_models import build_tokenizer

    return build_tokenizer(model_cache / "tokenizer")


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses an in-process engine fixture is ``embedded``, without saying so itself."""
    for item in items:
        if _NEEDS_AN_ENGINE_HERE.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.embedded)


def _built_by_the_engine_python(builder: str, out_dir: Path) -> Path:
    """Build a test model with torch and transformers: in this process, or in the engine Python."""
    from rank1_integrations.testing import tiny_models

    python = engine_python()
    if python == sys.executable:
        return Path(getattr(tiny_models, builder)(out_dir))
    code = f"import sys; from rank1_integrations.testing.tiny_models import {builder}; {builder}(sys.argv[1])"
    subprocess.run([python, "-c", code, str(out_dir)], cwd=_REPO, check=True, timeout=900)
    return out_dir


@pytest.fixture(scope="session")
def scripted_model_dir(model_cache: Path) -> Path:
    return _built_by_the_engine_python("build_scripted_model", model_cache / "scripted")


@pytest.fixture(scope="session")
def random_model_dir(model_cache: Path) -> Path:
    return _built_by_the_engine_python("build_random_model", model_cache / "random")


@pytest.fixture(scope="session")
def scripted_reranker(scripted_model_dir: Path) -> Iterator[object]:
    from rank1_integrations import Rank1Reranker

    return Rank1Reranker.from_vllm(str(scripted_model_dir), max_reasoning_tokens=SCRIPTED_BUDGET, **ENGINE_KWARGS)


@pytest.fixture(scope="session")
def random_reranker(random_model_dir: Path) -> Iterator[object]:
    from rank1_integrations import Rank1Reranker

    return Rank1Reranker.from_vllm(str(random_model_dir), max_reasoning_tokens=16, **ENGINE_KWARGS)
