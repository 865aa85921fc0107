"""``rank1-rerank-run`` as a process: killed with SIGKILL mid-run and started again with the same command
(embedded engine, vLLM server, Ray actors), Ray's actor pool against the single-process path, and its errors.

Each killed run must resume with only the pairs its checkpoint lacks and end with the
same outputs as an uninterrupted run in this process on the same model.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rank1_integrations import Rank1Reranker
from rank1_integrations.batch import rerank_run
from tests.batch_support import (
    REMOTE_TOLERANCE,
    RunSet,
    assert_same_outputs,
    complete_judged_pairs,
    kill_mid_run,
    records,
    run_cli,
    summary_counts,
    tiny_set,
    wide_set,
)
from tests.conftest import SCRIPTED_BUDGET
from tests.vllm_server import VLLMServer, shared_server, stop_all

DEPTH = "4"
KILL_AFTER = 12
"""Lines in the checkpoint when the run is killed (of 120 pairs in the wide set)."""


def outputs(directory: Path) -> tuple[Path, Path]:
    return directory / "out.trec", directory / "judgments.jsonl"


def cli_args(data: RunSet, directory: Path, *engine: str, depth: str = DEPTH) -> list[str]:
    out, judgments = outputs(directory)
    return [*data.args(), "--depth", depth, "--out", str(out), "--reasoning", str(judgments), "--no-progress", *engine]


def in_process(data: RunSet, directory: Path, reranker: Rank1Reranker, depth: str = DEPTH) -> tuple[Path, Path]:
    out, judgments = outputs(directory)
    rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=out,
        reasoning=judgments,
        engine=reranker,
        depth=int(depth),
    )
    return out, judgments


def kill_then_resume(args: list[str], directory: Path, pairs: int) -> None:
    """SIGKILL the run mid-way, start it again with the same arguments, check it judged only what was missing."""
    checkpoint = outputs(directory)[1]
    kill_mid_run(args, checkpoint, until=lambda lines: lines >= KILL_AFTER)
    kept = complete_judged_pairs(checkpoint)
    assert KILL_AFTER <= len(kept) < pairs
    finished = run_cli(args)
    assert finished.returncode == 0, finished.stderr[-4000:]
    judged_now, failed_now, before = summary_counts(finished.stderr)
    assert (before, judged_now, failed_now) == (len(kept), pairs - len(kept), 0)
    final = records(checkpoint)
    assert len({(r["qid"], r["docid"]) for r in final}) == len(final) == pairs  # one line per pair


# -- without an engine ----------------------------------------------------------------------


def test_the_runner_imports_neither_vllm_nor_ray_until_asked() -> None:
    code = """
        import sys
        import rank1_integrations.batch, rank1_integrations.batch.cli
        print(sorted(m for m in ("vllm", "torch", "ray", "pyarrow", "ir_measures", "ir_datasets") if m in sys.modules))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_ray_installed_ray_runs_name_the_extra(tmp_path: Path) -> None:
    code = f"""
        import sys
        sys.modules["ray"] = None  # an environment without Ray
        from rank1_integrations.batch.cli import main
        sys.exit(main({cli_args(tiny_set(), tmp_path, "--server", "http://127.0.0.1:9/v1", "--ray")!r}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert "pip install 'rank1-integrations[ray]'" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "choose the engine: --model PATH or --server URL"),
        (["--model", "m", "--server", "http://x/v1"], "choose the engine"),
        (["--server", "http://x/v1", "--engine-arg", "dtype=half"], "--engine-arg is for --model"),
        (["--server", "http://x/v1", "--depth", "0"], "depth must be a positive int"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    result = run_cli(cli_args(tiny_set(), tmp_path, *extra), timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_a_missing_run_file_exits_2(tmp_path: Path) -> None:
    data = RunSet(tmp_path / "nothing.run", tiny_set().corpus, tiny_set().queries)
    result = run_cli(cli_args(data, tmp_path, "--server", "http://127.0.0.1:9/v1"), timeout=120)
    assert result.returncode == 2
    assert "nothing.run does not exist" in result.stderr


# -- killed and resumed ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> RunSet:
    return wide_set(tmp_path_factory.mktemp("wide"))


@pytest.mark.engine
def test_embedded_run_killed_mid_run_resumes_to_the_uninterrupted_outputs(
    random_model_dir: Path, random_reranker: Rank1Reranker, wide: RunSet, tmp_path: Path
) -> None:
    engine = ["--model", str(random_model_dir), "--max-reasoning-tokens", "16", "--max-in-flight", "2"]
    engine += ["--engine-arg", "max_model_len=1024", "--engine-arg", "seed=0"]
    kill_then_resume(cli_args(wide, tmp_path / "cli", *engine), tmp_path / "cli", pairs=120)
    assert_same_outputs(outputs(tmp_path / "cli"), in_process(wide, tmp_path / "reference", random_reranker))


@pytest.mark.engine
def test_server_run_killed_mid_run_resumes_to_the_uninterrupted_outputs(
    server: VLLMServer, scripted_reranker: Rank1Reranker, wide: RunSet, tmp_path: Path
) -> None:
    engine = ["--server", server.base_url, "--served-model", server.model]
    engine += ["--max-reasoning-tokens", str(SCRIPTED_BUDGET), "--max-in-flight", "1", "--concurrency-per-server", "1"]
    kill_then_resume(cli_args(wide, tmp_path / "cli", *engine), tmp_path / "cli", pairs=120)
    reference = in_process(wide, tmp_path / "reference", scripted_reranker)
    assert_same_outputs(outputs(tmp_path / "cli"), reference, REMOTE_TOLERANCE)


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_ray_run_killed_mid_run_resumes_to_the_uninterrupted_outputs(
    server: VLLMServer, scripted_reranker: Rank1Reranker, wide: RunSet, tmp_path: Path
) -> None:
    """Two Ray actors, each a client of the server; the driver and its whole local Ray instance are killed."""
    engine = ["--server", server.base_url, "--served-model", server.model, "--concurrency-per-server", "1"]
    engine += ["--max-reasoning-tokens", str(SCRIPTED_BUDGET), "--ray", "--num-engines", "2"]
    engine += ["--cpus-per-engine", "0.5", "--ray-batch-size", "2"]
    kill_then_resume(cli_args(wide, tmp_path / "cli", *engine), tmp_path / "cli", pairs=120)
    reference = in_process(wide, tmp_path / "reference", scripted_reranker)
    assert_same_outputs(outputs(tmp_path / "cli"), reference, REMOTE_TOLERANCE)


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_ray_with_two_embedded_engines_matches_the_single_process_run(
    random_model_dir: Path, random_reranker: Rank1Reranker, tmp_path: Path
) -> None:
    engine = ["--model", str(random_model_dir), "--max-reasoning-tokens", "16", "--ray", "--num-engines", "2"]
    engine += ["--cpus-per-engine", "0.5", "--ray-batch-size", "4"]
    engine += ["--engine-arg", "max_model_len=1024", "--engine-arg", "seed=0"]
    engine += ["--engine-arg", "enforce_eager=true", "--engine-arg", "dtype=float32"]
    result = run_cli(cli_args(tiny_set(), tmp_path / "ray", *engine, depth="5"), timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    actors = set(re.findall(r"\(MapWorker\(MapBatches\(RerankActor\)\) pid=(\d+)\)", result.stderr))
    assert len(actors) == 2, result.stderr[-4000:]
    reference = in_process(tiny_set(), tmp_path / "reference", random_reranker, depth="5")
    assert_same_outputs(outputs(tmp_path / "ray"), reference)
