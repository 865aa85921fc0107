"""``rank1 serve`` as a real process: engine arguments, the API key from the environment, SIGTERM,
and the gateway mode in front of a vLLM server without vLLM or torch in the process."""

from __future__ import annotations

import ast
import importlib.metadata
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cohere
import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from rank1_integrations.cli import main
from tests.adapter_support import REMOTE_TOLERANCE
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.serve_support import API_KEY, REPORTING_LAUNCHER, ServeProcess
from tests.vllm_server import shared_server, stop_all

_REPO = Path(__file__).resolve().parent.parent


def in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return next(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name.endswith("in_progress")
    )


@pytest.mark.engine
def test_sigterm_lets_running_requests_finish(random_model_dir: Path, model_cache: Path) -> None:
    budget = 300
    args = ["--model", str(random_model_dir), "--model-name", "rank1-random", "--model-name", "rank1"]
    args += ["--max-reasoning-tokens", str(budget), "--serve-api-key-env", "MY_RANK1_KEY", "--grace-period", "120"]
    args += ["--engine-arg", "dtype=float32", "--engine-arg", "enforce_eager=true"]
    args += ["--engine-arg", "max_model_len=1024", "--engine-arg", "seed=0"]
    env = {"MY_RANK1_KEY": API_KEY, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = ServeProcess(args, model_cache / "rank1-serve-sigterm.log", env=env).wait_ready()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    try:
        models = httpx.get(f"{server.url}/v1/models", headers=auth).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("rank1-random", 1024), ("rank1", 1024)]
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        body = {
            "model": "rank1",
            "query": "when was the mill built",
            "documents": ["The mill was built in 1820.", "A bridge."],
        }
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{server.url}/v2/rerank", json=body, headers=auth, timeout=300)
            deadline = time.monotonic() + 60
            while in_progress(server.url) < 2:  # the rerank, and this scrape
                assert time.monotonic() < deadline
                time.sleep(0.05)
            server.terminate()
            response = running.result()
        assert response.status_code == 200
        assert [r["reasoning_tokens"] for r in response.json()["results"]] == [budget, budget]
        # uvicorn exits by the signal it handled, as a process manager expects, after the app shut down
        assert server.process.wait(timeout=120) == -signal.SIGTERM
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")
        log = server.log()
        assert "rank1-serve stopped; the reranker is closed" in log
        assert API_KEY not in log
    finally:
        server.kill()


@pytest.mark.engine
def test_sigterm_past_the_grace_period_answers_running_requests_503_json(
    random_model_dir: Path, model_cache: Path
) -> None:
    args = ["--model", str(random_model_dir), "--max-reasoning-tokens", "800", "--grace-period", "0"]
    args += ["--engine-arg", "max_model_len=1024", "--engine-arg", "seed=0"]  # float32, eager: CPU defaults
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = ServeProcess(args, model_cache / "rank1-serve-sigterm-cut.log", env=env).wait_ready()
    try:
        body = {"query": "when was the mill built", "documents": ["The mill was built in 1820.", "A bridge."]}
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{server.url}/v1/rerank", json=body, timeout=300)
            deadline = time.monotonic() + 60
            while in_progress(server.url) < 2:  # the rerank (800 tokens of reasoning: seconds), and this scrape
                assert time.monotonic() < deadline
                time.sleep(0.05)
            server.terminate()
            response = running.result()
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"] == {
            "message": "the server is shutting down: send the request again",
            "type": "shutting_down",
            "param": None,
            "code": 503,
        }
        assert server.process.wait(timeout=120) == -signal.SIGTERM
        assert "Traceback" not in server.log()
    finally:
        server.kill()


@pytest.mark.engine
def test_gateway_in_front_of_a_vllm_server_needs_neither_vllm_nor_torch(
    scripted_model_dir: Path, model_cache: Path, truth, request: pytest.FixtureRequest
) -> None:
    request.config.add_cleanup(stop_all)
    upstream = shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()
    args = ["--server", upstream.base_url, "--model", upstream.model, "--model-name", "rank1-gateway"]
    args += ["--max-reasoning-tokens", str(SCRIPTED_BUDGET)]
    log = model_cache / "rank1-serve-gateway.log"
    gateway = ServeProcess(args, log, launcher=REPORTING_LAUNCHER).wait_ready()
    try:
        client = cohere.ClientV2(api_key="not-checked", base_url=gateway.url)
        documents = [SORTED_PASSAGE, LEN_PASSAGE, OPEN_PASSAGE]
        results = client.rerank(model="rank1-gateway", query=LEN_QUERY, documents=documents).results
        assert [r.index for r in results] == [1, 2, 0]
        expected = [truth["len"], truth["open"], truth["sorted"]]
        assert [r.relevance_score for r in results] == pytest.approx([j.score for j in expected], abs=REMOTE_TOLERANCE)
        assert [r.model_dump()["reasoning"] for r in results] == [j.reasoning for j in expected]
        gateway.terminate()
        assert gateway.process.wait(timeout=60) == 0
        assert "heavy modules at exit: []" in gateway.log()
    finally:
        gateway.kill()


UNREACHABLE = ["--server", "http://127.0.0.1:9/v1"]
"""A gateway whose upstream refuses connections: a mistake the parser misses ends in exit 1, not 2."""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*UNREACHABLE, "--dtype", "float32"], "unrecognized arguments: --dtype float32"),
        (["--model-name", "x"], "model: give the model to serve"),
        (["--model", "m", "--serve-api-key-env", "RANK1_TEST_UNSET_VARIABLE"], "that variable is not set"),
        (["--model", "m", "--serve-api-key-env", "RANK1_TEST_BLANK_VARIABLE"], "that variable is not set"),
        ([*UNREACHABLE, "--api-key-env", "RANK1_TEST_UNSET_VARIABLE"], "api_key_env: the environment variable"),
        ([*UNREACHABLE, "--model-name", ""], "argument --model-name: must not be empty"),
        ([*UNREACHABLE, "--model", " "], "model: Value error, must not be blank"),
        ([*UNREACHABLE, "--engine-arg", "x"], "engine_args: --engine-arg needs KEY=VALUE"),
        ([*UNREACHABLE, "--port", "99999"], "argument --port: must be a finite number from 1 to 65535, got '99999'"),
        ([*UNREACHABLE, "--port", "http"], "argument --port: invalid int value: 'http'"),
        ([*UNREACHABLE, "--disconnect-grace", "nan"], "argument --disconnect-grace: must be a finite number >= 0"),
        ([*UNREACHABLE, "--grace-period", "inf"], "argument --grace-period: must be a finite number >= 0, got 'inf'"),
        ([*UNREACHABLE, "--grace-period", "-1"], "argument --grace-period: must be a finite number >= 0, got '-1'"),
        ([*UNREACHABLE, "--max-documents", "0"], "argument --max-documents: must be a finite number >= 1, got '0'"),
        ([*UNREACHABLE, "--max-characters", "-5"], "argument --max-characters: must be a finite number >= 1"),
        ([*UNREACHABLE, "--max-body-bytes", "0"], "argument --max-body-bytes: must be a finite number >= 1"),
        ([*UNREACHABLE, "--max-reasoning-tokens", "0"], "max_reasoning_tokens: Input should be greater than or"),
        ([*UNREACHABLE, "--context-size", "1.5"], "context_size: Input should be a valid integer"),
        ([*UNREACHABLE, "--cache-entries", "-1"], "cache_entries: Input should be greater than or equal to 0"),
        ([*UNREACHABLE, "--max-concurrency", "0"], "max_concurrency: Input should be greater than or equal to 1"),
    ],
)
def test_command_line_mistakes_stop_before_anything_starts(argv, message, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RANK1_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("RANK1_TEST_BLANK_VARIABLE", " \n")
    try:
        code = main(["serve", *argv])
    except SystemExit as stopped:
        code = stopped.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_console_script_and_extra_are_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((_REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"rank1": "rank1_integrations.cli:main"}
    serve = [Requirement(r) for r in project["optional-dependencies"]["serve"]]
    assert all({">=", "<"} <= {spec.operator for spec in r.specifier} for r in serve)  # a floor and a cap
    # Every distribution the serve package imports when it loads is declared: by the core or by the
    # serve extra (what a function imports later, after require(), is another extra's: vllm's).
    imported: set[str] = set()
    for path in (_REPO / "rank1_integrations" / "serve").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "rank1_integrations"}
    distributions = importlib.metadata.packages_distributions()
    needed = {canonicalize_name(d) for module in third_party for d in distributions[module]}
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]} | {
        canonicalize_name(r.name) for r in serve
    }
    assert needed <= declared, needed - declared
    assert {"fastapi", "starlette", "pydantic"} <= needed  # what it found


def test_without_the_serve_extra_the_import_names_it() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["fastapi"] = None  # what an environment without FastAPI looks like to import
        from rank1_integrations import MissingDependencyError
        try:
            import rank1_integrations.serve
        except MissingDependencyError as err:
            print(err.extras)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=_REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('serve',)"


def test_a_gateway_without_a_reachable_upstream_says_so_and_exits(tmp_path: Path) -> None:
    server = ServeProcess(["--server", "http://127.0.0.1:9/v1", "--model", "rank1"], tmp_path / "gateway.log")
    try:
        assert server.process.wait(timeout=120) == 1
        assert "rank1 serve: error: ServerConnectionError: could not reach http://127.0.0.1:9/v1/models" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.kill()
