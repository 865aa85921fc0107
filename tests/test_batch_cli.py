"""``rank1 run`` as a process: killed with SIGKILL mid-run and started again with the same command
(embedded engine, vLLM server, Ray actors), Ray's actor pool against the single-process path, and its errors.

Each killed run must resume with only the pairs its checkpoint lacks and end with the
same outputs as an uninterrupted run in this process on the same model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rank1_integrations import Rank1Reranker
from rank1_integrations.batch import rerank_run
from rank1_integrations.batch.records import RunSettings
from tests.batch_support import (
    REMOTE_TOLERANCE,
    RunSet,
    assert_same_outputs,
    cli_env,
    complete_judged_pairs,
    finished_checkpoint,
    kill_mid_run,
    records,
    run_cli,
    summary_counts,
    tiny_set,
    trec,
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
        import rank1_integrations.batch, rank1_integrations.cli.run, rank1_integrations.cli.rerank
        print(sorted(m for m in ("vllm", "torch", "ray", "pyarrow", "ir_measures", "ir_datasets") if m in sys.modules))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_ray_installed_ray_runs_name_the_extra(tmp_path: Path) -> None:
    code = f"""
        import sys
        sys.modules["ray"] = None  # an environment without Ray
        from rank1_integrations.cli import main
        sys.exit(main(['run', *{cli_args(tiny_set(), tmp_path, "--server", "http://127.0.0.1:9/v1", "--ray")!r}]))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert "pip install 'rank1-integrations[ray]'" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "model: give the model for an embedded engine (--model), or servers (--server URL)"),
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


MODEL = "rank1-test-model"
FINISHED = RunSettings(MODEL, None, 16, 1024)
"""The settings of :func:`finished` checkpoints."""
NO_SERVER = "http://127.0.0.1:9/v1"


def finished(directory: Path) -> dict[str, list[str]]:
    """A finished run's checkpoint of the tiny set at ``DEPTH`` in ``directory``; returns its reranked run."""
    return finished_checkpoint(tiny_set(), outputs(directory)[1], FINISHED, int(DEPTH))


def run_cli_without_engines(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI where no engine can start: vLLM and Ray cannot be imported, and nothing listens at NO_SERVER."""
    code = f"""
        import sys
        sys.modules["vllm"] = sys.modules["ray"] = None
        from rank1_integrations.cli import main
        sys.exit(main(['run', *{args!r}]))
    """
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=cli_env(), capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "engine",
    [
        ["--model", MODEL],
        ["--model", MODEL, "--engine-arg", "max_model_len=1024"],
        ["--server", NO_SERVER],
        ["--server", NO_SERVER, "--model", MODEL, "--ray"],
    ],
)
def test_a_finished_run_started_again_writes_its_outputs_without_starting_an_engine(
    tmp_path: Path, engine: list[str]
) -> None:
    reranked = finished(tmp_path)
    result = run_cli_without_engines(cli_args(tiny_set(), tmp_path, *engine, "--max-reasoning-tokens", "16"))
    assert result.returncode == 0, result.stderr
    assert summary_counts(result.stderr) == (0, 0, len(records(outputs(tmp_path)[1])))
    assert trec(outputs(tmp_path)[0]) == reranked


@pytest.mark.parametrize(
    ("engine", "difference"),
    [
        (["--model", MODEL, "--max-reasoning-tokens", "32"], "max_reasoning_tokens: 16 != 32"),
        (["--model", MODEL, "--template", "SciFact"], "template: None != 'Claim: FILL_QUERY_HERE"),
        (["--model", MODEL, "--engine-arg", "max_model_len=2048"], "context_size: 1024 != 2048"),
        (["--server", NO_SERVER, "--model", "other", "--ray"], "model: 'rank1-test-model' != 'other'"),
        (["--model", MODEL, "--reasoning-effort", "none"], "reasoning_effort: 'full' != 'none'"),
        (
            ["--server", NO_SERVER, "--reasoning-effort", "adaptive", "--adaptive-top-k", "2"],
            "reasoning_effort: 'full' != 'adaptive'",
        ),
    ],
)
def test_a_finished_run_refuses_other_settings_without_starting_an_engine(
    tmp_path: Path, engine: list[str], difference: str
) -> None:
    finished(tmp_path)
    before = outputs(tmp_path)[1].read_bytes()
    result = run_cli_without_engines(cli_args(tiny_set(), tmp_path, "--max-reasoning-tokens", "16", *engine))
    assert result.returncode == 2, result.stderr
    assert f"checkpoint != this run: {difference}" in result.stderr
    assert outputs(tmp_path)[1].read_bytes() == before
    assert not outputs(tmp_path)[0].exists()


def test_without_its_settings_file_a_finished_run_starts_the_engine_only_to_learn_unknown_settings(
    tmp_path: Path,
) -> None:
    finished(tmp_path)
    settings_file = tmp_path / "judgments.jsonl.settings.json"
    settings_file.unlink()
    unknown = run_cli_without_engines(cli_args(tiny_set(), tmp_path, "--server", NO_SERVER))  # model, context?
    assert unknown.returncode == 1, unknown.stderr
    assert "ServerConnectionError" in unknown.stderr  # it asked the servers
    every = ["--server", NO_SERVER, "--model", MODEL, "--context-size", "1024", "--max-reasoning-tokens", "16"]
    known = run_cli_without_engines(cli_args(tiny_set(), tmp_path, *every))
    assert known.returncode == 0, known.stderr
    assert json.loads(settings_file.read_text())["settings"] == FINISHED.to_dict()


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
    engine = ["--server", server.base_url, "--model", server.model]
    engine += ["--max-reasoning-tokens", str(SCRIPTED_BUDGET), "--max-in-flight", "1", "--max-concurrency", "1"]
    kill_then_resume(cli_args(wide, tmp_path / "cli", *engine), tmp_path / "cli", pairs=120)
    reference = in_process(wide, tmp_path / "reference", scripted_reranker)
    assert_same_outputs(outputs(tmp_path / "cli"), reference, REMOTE_TOLERANCE)


FILE_SIZE_LIMIT = 16384
"""Bytes a process of the test below may write to one file: the checkpoint of the wide set outgrows it."""


@pytest.mark.engine
def test_a_failing_write_stops_the_run_with_a_message_and_the_same_command_resumes(
    server: VLLMServer, scripted_reranker: Rank1Reranker, wide: RunSet, tmp_path: Path
) -> None:
    """A real failing write (a file size limit, as a full disk would fail it) in the middle of the run."""
    engine = ["--server", server.base_url, "--model", server.model]
    engine += ["--max-reasoning-tokens", str(SCRIPTED_BUDGET), "--max-in-flight", "1", "--max-concurrency", "1"]
    args = cli_args(wide, tmp_path / "cli", *engine)
    code = f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.RLIM_INFINITY))
        from rank1_integrations.cli import main
        sys.exit(main(['run', *{args!r}]))
    """
    stopped = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert stopped.returncode == 1, stopped.stderr[-4000:]
    assert "Traceback" not in stopped.stderr
    assert "error: StorageError: the run stopped on an OS error (OSError: [Errno 27] File too large)" in stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    checkpoint = outputs(tmp_path / "cli")[1]
    assert checkpoint.stat().st_size == FILE_SIZE_LIMIT
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["judgments.jsonl", "judgments.jsonl.settings.json"]
    kept = complete_judged_pairs(checkpoint)
    assert 0 < len(kept) < 120
    finished = run_cli(args)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert summary_counts(finished.stderr) == (120 - len(kept), 0, len(kept))
    reference = in_process(wide, tmp_path / "reference", scripted_reranker)
    assert_same_outputs(outputs(tmp_path / "cli"), reference, REMOTE_TOLERANCE)


@pytest.mark.engine
def test_invalid_input_exits_2_naming_the_pairs_and_is_not_judged_again(server: VLLMServer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    docs = [json.loads(line) for line in tiny_set().corpus.read_text().splitlines()]
    for doc in docs:
        if doc["_id"] == "json.dumps#1":
            doc["title"], doc["text"] = "", ""
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    engine = [
        "--server",
        server.base_url,
        "--model",
        server.model,
        "--max-reasoning-tokens",
        str(SCRIPTED_BUDGET),
    ]
    args = cli_args(RunSet(tiny_set().run, corpus, tiny_set().queries), tmp_path, *engine, depth="5")
    first = run_cli(args)
    assert first.returncode == 2, first.stderr[-4000:]
    named = re.findall(r"(q\d+)/json\.dumps#1 \(InvalidInputError: passages at indices \[0\] are empty\)", first.stderr)
    assert "q1" in named
    assert "correct the invalid ones' texts in the corpus or queries" in first.stderr
    assert "run the same command again" not in first.stderr
    judged_now, failed_now, _ = summary_counts(first.stderr)
    assert failed_now == len(named)
    again = run_cli(args)
    assert again.returncode == 2, again.stderr[-4000:]
    assert summary_counts(again.stderr) == (0, 0, judged_now)  # nothing attempted again
    allowed = run_cli([*args, "--allow-failures"])
    assert allowed.returncode == 0, allowed.stderr[-4000:]


@pytest.mark.engine
@pytest.mark.timeout(1500)
def test_ray_run_killed_mid_run_resumes_to_the_uninterrupted_outputs(
    server: VLLMServer, scripted_reranker: Rank1Reranker, wide: RunSet, tmp_path: Path
) -> None:
    """Two Ray actors, each a client of the server; the driver and its whole local Ray instance are killed."""
    engine = ["--server", server.base_url, "--model", server.model, "--max-concurrency", "1"]
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
