"""``rerank_run`` in this process on real engines: the embedded engine and vLLM servers on the tiny models.

The runner's judgments are checked against ``judge`` on the same passages, resuming is
checked against an uninterrupted run, and failures, other settings and changed texts
against what the checkpoint holds afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rank1_integrations import InvalidInputError, Rank1Reranker
from rank1_integrations.batch import CheckpointError, IncompleteRunError, rerank_run
from rank1_integrations.settings import Rank1Settings
from tests.batch_support import (
    REMOTE_TOLERANCE,
    TOLERANCE,
    RunSet,
    assert_same_outputs,
    records,
    tiny_set,
    trec,
)
from tests.conftest import SCRIPTED_BUDGET
from tests.fault_proxy import Fault, FaultProxy
from tests.vllm_server import VLLMServer, shared_server, stop_all

pytestmark = pytest.mark.engine

DEPTH = 5


def rerun(data: RunSet, directory: Path, engine: object, **kwargs: object) -> tuple[Path, Path]:
    """Rerank ``data`` into ``directory`` (out.trec, judgments.jsonl); returns the two paths."""
    out, judgments = directory / "out.trec", directory / "judgments.jsonl"
    directory.mkdir(parents=True, exist_ok=True)
    rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=out,
        reasoning=judgments,
        engine=engine,  # type: ignore[arg-type]
        depth=DEPTH,
        **kwargs,  # type: ignore[arg-type]
    )
    return out, judgments


def first_stage(run: Path) -> dict[str, list[str]]:
    rows: dict[str, list[tuple[float, int, str]]] = {}
    for line in run.read_text().splitlines():
        qid, _, docid, rank, score, _ = line.split()
        rows.setdefault(qid, []).append((-float(score), int(rank), docid))
    return {qid: [docid for *_, docid in sorted(found)] for qid, found in rows.items()}


def beir_texts(data: RunSet) -> tuple[dict[str, str], dict[str, str]]:
    corpus = {}
    for line in data.corpus.read_text().splitlines():
        doc = json.loads(line)
        corpus[doc["_id"]] = f"{doc['title']} {doc['text']}".strip()
    queries = {q["_id"]: q["text"] for q in map(json.loads, data.queries.read_text().splitlines())}
    return corpus, queries


@pytest.fixture(scope="module")
def reference(random_reranker: Rank1Reranker, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny set reranked once, uninterrupted, on the session's embedded engine."""
    return rerun(tiny_set(), tmp_path_factory.mktemp("reference"), random_reranker)


def test_every_pair_is_judged_as_judge_judges_it_and_reranked_by_score(
    reference: tuple[Path, Path], random_reranker: Rank1Reranker
):
    data = tiny_set()
    corpus, queries = beir_texts(data)
    stage = first_stage(data.run)
    got = {(r["qid"], r["docid"]): r for r in records(reference[1])}
    assert len(got) == len(records(reference[1])) == sum(min(DEPTH, len(docs)) for docs in stage.values())
    expected_run = {}
    for qid, docs in stage.items():
        top = docs[:DEPTH]
        judgments = random_reranker.judge(queries[qid], [corpus[d] for d in top])
        for docid, judgment in zip(top, judgments, strict=True):
            record = got[(qid, docid)]
            assert record["score"] == pytest.approx(judgment.score, abs=TOLERANCE)
            assert (record["relevant"], record["forced"], record["reasoning"]) == (
                judgment.relevant,
                judgment.forced,
                judgment.reasoning,
            )
            assert record["reasoning_tokens"] == judgment.reasoning_tokens == 16
        scores = {d: j.score for d, j in zip(top, judgments, strict=True)}
        expected_run[qid] = sorted(top, key=lambda d, s=scores, t=top: (-s[d], t.index(d))) + docs[DEPTH:]
    assert trec(reference[0]) == expected_run
    lines = reference[0].read_text().splitlines()
    assert all(line.endswith(" rank1") and line.split()[1] == "Q0" for line in lines)


def test_metrics_before_and_after(random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]):
    import ir_measures

    data = tiny_set()
    shutil.copy(reference[1], tmp_path / "judgments.jsonl")  # judged already: this run only evaluates
    result = rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=tmp_path / "out.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
        qrels=data.qrels,
        measures=["nDCG@10", "R@5"],
    )
    assert result.summary.judged_now == 0
    assert result.summary.from_checkpoint == result.summary.pairs == result.summary.judged
    assert result.metrics is not None
    for name, run in (("first stage", data.run), ("rank1", reference[0])):
        qrels = list(ir_measures.read_trec_qrels(str(data.qrels)))
        want = ir_measures.calc_aggregate(
            [ir_measures.nDCG @ 10, ir_measures.R @ 5], qrels, ir_measures.read_trec_run(str(run))
        )
        assert result.metrics[name] == {str(m): pytest.approx(v) for m, v in want.items()}
    assert result.as_dict() == trec(reference[0])


def test_a_resumed_run_judges_only_what_is_missing_and_ends_as_an_uninterrupted_one(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    data = tiny_set()
    lines = data.run.read_text().splitlines()
    partial = tmp_path / "partial.run"
    partial.write_text("\n".join(line for line in lines if line.split()[0] in ("q1", "q2", "q3")) + "\n")
    first = rerun(RunSet(partial, data.corpus, data.queries), tmp_path, random_reranker)
    done = len(records(first[1]))
    assert done == 5 + 4 + 1
    judgments = tmp_path / "judgments.jsonl"
    result = rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=tmp_path / "out.trec",
        reasoning=judgments,
        engine=random_reranker,
        depth=DEPTH,
    )
    assert (result.summary.from_checkpoint, result.summary.judged_now) == (done, result.summary.pairs - done)
    assert_same_outputs((tmp_path / "out.trec", judgments), reference)


class CountingBackend:
    """The real backend, counting the requests it has in flight."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.in_flight = self.most = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def submit(self, requests: Any, on_result: Any) -> Any:
        def counted(position: int, result: Any) -> None:
            with self._lock:
                self.in_flight -= 1
            on_result(position, result)

        with self._lock:
            self.in_flight += len(requests)
            self.most = max(self.most, self.in_flight)
        return self._backend.submit(requests, counted)


def test_judge_many_iter_keeps_its_window_and_hands_invalid_passages_back_unjudged(random_reranker: Rank1Reranker):
    backend = CountingBackend(random_reranker.backend)
    reranker = Rank1Reranker(backend, random_reranker.settings, cache=False)  # type: ignore[arg-type]
    batches = [(f"query {i}", (f"passage {i} a", f"passage {i} b")) for i in range(6)]
    batches.insert(3, ("query bad", ("fine", " ", "x \ud800")))
    batches.append(("  ", ("p",)))
    got = list(reranker.judge_many_iter(batches, max_in_flight=4))
    assert sorted((number, j.index) for number, j in got) == [
        (b, i) for b, (_, ps) in enumerate(batches) for i in range(len(ps))
    ]
    assert (backend.most, backend.in_flight) == (4, 0)
    found = {(number, j.index): j for number, j in got}
    assert [found[(3, i)].error for i in (1, 2)] == [
        "InvalidInputError: passages at indices [1] are empty",
        "InvalidInputError: passages at indices [2] are not valid Unicode text (they hold lone surrogates)",
    ]
    assert found[(7, 0)].error == "InvalidInputError: query is empty"
    want = random_reranker.judge("query bad", ["fine"])[0]
    assert found[(3, 0)].score == pytest.approx(want.score, abs=TOLERANCE)
    assert all(j.judged for key, j in found.items() if key not in ((3, 1), (3, 2), (7, 0)))


def test_a_no_think_run_judges_every_pair_without_reasoning_and_refuses_a_resume_with_another_effort(
    random_reranker: Rank1Reranker, tmp_path: Path
):
    no_think = Rank1Reranker(random_reranker.backend, random_reranker.settings, reasoning_effort="none")
    _, judgments = rerun(tiny_set(), tmp_path, no_think)
    lines = records(judgments)
    assert len(lines) == sum(min(DEPTH, len(docs)) for docs in first_stage(tiny_set().run).values())
    assert all(r["reasoning_tokens"] == 0 and r["reasoned"] is False and r["error"] is None for r in lines)
    settings = json.loads(judgments.with_name("judgments.jsonl.settings.json").read_text())["settings"]
    assert settings["reasoning_effort"] == "none"
    before = judgments.read_bytes()
    with pytest.raises(CheckpointError, match=r"checkpoint != this run: reasoning_effort: 'none' != 'full'"):
        rerun(tiny_set(), tmp_path, random_reranker)
    adaptive = Rank1Reranker(random_reranker.backend, random_reranker.settings, reasoning_effort="adaptive")
    with pytest.raises(CheckpointError, match=r"reasoning_effort: 'none' != 'adaptive'"):
        rerun(tiny_set(), tmp_path, adaptive)
    assert judgments.read_bytes() == before


def test_an_adaptive_run_judges_whole_queries_as_judge_does(random_reranker: Rank1Reranker, tmp_path: Path):
    adaptive = Rank1Reranker(random_reranker.backend, random_reranker.settings, reasoning_effort="adaptive")
    data = tiny_set()
    corpus, queries = beir_texts(data)
    _, judgments = rerun(data, tmp_path, adaptive, max_in_flight=2)  # units would be 1 pair, but for adaptive
    got = {(r["qid"], r["docid"]): r for r in records(judgments)}
    for qid, docs in first_stage(data.run).items():
        top = docs[:DEPTH]
        for docid, judgment in zip(top, adaptive.judge(queries[qid], [corpus[d] for d in top]), strict=True):
            assert got[(qid, docid)]["reasoned"] == judgment.reasoned
            assert got[(qid, docid)]["score"] == pytest.approx(judgment.score, abs=TOLERANCE)


def test_a_checkpoint_written_before_efforts_existed_resumes(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    judgments = tmp_path / "judgments.jsonl"
    old_lines = [{k: v for k, v in r.items() if k != "reasoned"} for r in records(reference[1])]
    judgments.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in old_lines[: len(old_lines) // 2]))
    settings = json.loads(reference[1].with_name("judgments.jsonl.settings.json").read_text())
    assert set(settings["settings"]) == {"model", "template", "max_reasoning_tokens", "context_size"}
    shutil.copy(reference[1].with_name("judgments.jsonl.settings.json"), tmp_path)
    result = rerank_run(
        tiny_set().run,
        corpus=tiny_set().corpus,
        queries=tiny_set().queries,
        out=tmp_path / "out.trec",
        reasoning=judgments,
        engine=random_reranker,
        depth=DEPTH,
    )
    assert result.summary.from_checkpoint == len(old_lines) // 2
    assert_same_outputs((tmp_path / "out.trec", judgments), reference)


def test_invalid_pairs_are_named_and_judged_again_only_once_their_texts_change(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    """Pairs rank1 refuses as input (an empty passage, a lone surrogate, a query too long for the context)
    would fail the same way every time: recorded as invalid, named, not retried by the next run."""
    data = tiny_set()
    stage = first_stage(data.run)
    docs = [json.loads(line) for line in data.corpus.read_text().splitlines()]
    surrogate = stage["q4"][0]
    for doc in docs:
        if doc["_id"] == "json.dumps#1":
            doc["title"], doc["text"] = "", "   "  # nothing rank1 can judge
        if doc["_id"] == surrogate:
            doc["text"] += " \ud800"  # valid JSON, not valid Unicode
    broken = RunSet(data.run, tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl")
    broken.corpus.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    queries = [json.loads(line) for line in data.queries.read_text().splitlines()]
    for query in queries:
        if query["_id"] == "q2":
            query["text"] = " ".join(f"word{i}" for i in range(2000))  # longer than the context
    broken.queries.write_text("".join(json.dumps(query) + "\n" for query in queries))
    invalid = {(q, d) for q, top in stage.items() for d in top[:DEPTH] if d in ("json.dumps#1", surrogate) or q == "q2"}
    assert {q for q, _ in invalid} >= {"q1", "q2", "q4"}

    with pytest.raises(IncompleteRunError) as caught:
        rerun(broken, tmp_path, random_reranker)
    assert (caught.value.failed, caught.value.invalid) == (len(invalid), len(invalid))
    message = str(caught.value)
    assert (
        f"{len(invalid)} are invalid input, e.g. q1/json.dumps#1 (InvalidInputError: passages at indices [0] are"
        in message
    )
    assert "q2/" in message
    assert "correct the invalid ones' texts in the corpus or queries" in message
    assert "run the same command again" not in message
    assert not (tmp_path / "out.trec").exists()
    failed = [r for r in records(tmp_path / "judgments.jsonl") if r["error"] is not None]
    assert {(r["qid"], r["docid"]) for r in failed} == invalid
    assert all(r["invalid"] is True and r["score"] is None and r["relevant"] is None for r in failed)
    errors = {str(r["error"]) for r in failed}
    assert any("empty" in e for e in errors)
    assert any("not valid Unicode" in e for e in errors)
    assert any("the query and instructions alone take" in e for e in errors)

    allowed = rerank_run(
        broken.run,
        corpus=broken.corpus,
        queries=broken.queries,
        out=tmp_path / "allowed.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
        allow_failures=True,
    )
    summary = allowed.summary
    assert (summary.judged_now, summary.failed_now) == (0, 0)  # nothing attempted again
    assert (summary.failed, summary.invalid) == (len(invalid), len(invalid))
    ranking = trec(tmp_path / "allowed.trec")
    for qid in ("q1", "q4"):
        assert ranking[qid][len(stage[qid][:DEPTH]) - 1] in ("json.dumps#1", surrogate)  # below the judged ones

    fixed = rerank_run(  # the texts corrected: those pairs are judged now
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=tmp_path / "out.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
    )
    assert (fixed.summary.judged_now, fixed.summary.failed, fixed.summary.invalid) == (len(invalid), 0, 0)
    assert_same_outputs((tmp_path / "out.trec", tmp_path / "judgments.jsonl"), reference)


def copied_inputs(directory: Path) -> RunSet:
    directory.mkdir(parents=True)
    data = tiny_set()
    assert data.qrels is not None
    return RunSet(*(Path(shutil.copy(path, directory)) for path in (data.run, data.corpus, data.queries, data.qrels)))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("out is the corpus", r"out .*corpus\.jsonl would write over the corpus file"),
        ("out links to the queries", r"out .*ranked\.trec would write over the queries file"),
        ("out is the run, relative", r"out .*tiny\.run would write over the run file"),
        ("out is a hard link to the qrels", r"out .*ranked\.trec would write over the qrels file"),
        ("out is the checkpoint's settings", r"out .*settings\.json would write over the checkpoint's files"),
        ("reasoning is the corpus", r"reasoning .*corpus\.jsonl would write over the corpus file"),
        ("the corpus is in the checkpoint's work folder", r"reasoning .* would write over the run file"),
    ],
)
def test_outputs_that_would_write_over_an_input_are_refused_before_anything_is_written(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path], case: str, message: str
):
    judgments = tmp_path / "judgments.jsonl"
    inputs = copied_inputs(tmp_path / "judgments.jsonl.work" if "work folder" in case else tmp_path / "inputs")
    shutil.copy(reference[1], judgments)  # finished: a run would go straight to writing its outputs
    out, reasoning = tmp_path / "links" / "ranked.trec", judgments
    out.parent.mkdir()
    if case == "out is the corpus":
        out = inputs.corpus
    elif case == "out links to the queries":
        out.symlink_to(inputs.queries)
    elif case == "out is the run, relative":
        out = Path(os.path.relpath(inputs.run))
    elif case == "out is a hard link to the qrels":
        assert inputs.qrels is not None
        os.link(inputs.qrels, out)
    elif case == "out is the checkpoint's settings":
        out = tmp_path / "judgments.jsonl.settings.json"
    elif case == "reasoning is the corpus":
        reasoning = inputs.corpus
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(InvalidInputError, match=message):
        rerank_run(
            inputs.run,
            corpus=inputs.corpus,
            queries=inputs.queries,
            out=out,
            reasoning=reasoning,
            engine=random_reranker,
            depth=DEPTH,
            qrels=inputs.qrels,
        )
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_output_folders_are_made_or_refused_before_anything_is_judged(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    data = tiny_set()
    blocked = tmp_path / "a file"
    blocked.write_text("")
    judgments = tmp_path / "judgments.jsonl"
    with pytest.raises(InvalidInputError, match=r"cannot create the folder of out .*a file/out\.trec"):
        rerank_run(
            data.run,
            corpus=data.corpus,
            queries=data.queries,
            out=blocked / "out.trec",
            reasoning=judgments,
            engine=random_reranker,
            depth=DEPTH,
        )
    assert not judgments.exists()  # nothing judged
    shutil.copy(reference[1], judgments)
    result = rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=tmp_path / "new" / "folder" / "out.trec",
        reasoning=judgments,
        engine=random_reranker,
        depth=DEPTH,
    )
    assert trec(result.out) == trec(reference[0])


@pytest.mark.parametrize("complete", [True, False])
def test_a_checkpoint_of_other_settings_is_refused_and_left_as_it_was(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path], complete: bool
):
    judgments = tmp_path / "judgments.jsonl"
    lines = reference[1].read_text().splitlines(keepends=True)
    judgments.write_text("".join(lines if complete else lines[: len(lines) // 2]))
    shutil.copy(reference[1].with_name("judgments.jsonl.settings.json"), tmp_path)
    before = judgments.read_bytes()
    shorter = Rank1Reranker(random_reranker.backend, max_reasoning_tokens=8)
    with pytest.raises(CheckpointError, match=r"checkpoint != this run: max_reasoning_tokens: 16 != 8"):
        rerun(tiny_set(), tmp_path, shorter)
    assert judgments.read_bytes() == before
    assert not (tmp_path / "out.trec").exists()


def test_judgments_of_texts_that_changed_since_are_refused(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    data = tiny_set()
    shutil.copy(reference[1], tmp_path / "judgments.jsonl")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(data.queries.read_text().replace("serialize a Python object", "serialise an object"))
    with pytest.raises(CheckpointError, match=r"judged 5 pairs on other texts .*q1/"):
        rerun(RunSet(data.run, data.corpus, queries), tmp_path, random_reranker)


def test_ir_datasets_ids_read_the_same_set(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.datasets.beir import BeirTitleDoc
    from ir_datasets.formats import GenericQuery, JsonlDocs, JsonlQueries, TrecQrels
    from ir_datasets.util import LocalDownload

    data = tiny_set()
    name = f"rank1-tests/tiny-{tmp_path.name}"
    ir_datasets.registry.register(
        name,
        Dataset(
            JsonlDocs(
                LocalDownload(data.corpus),
                doc_cls=BeirTitleDoc,
                mapping={"doc_id": "_id", "title": "title", "text": "text"},
                docstore_path=str(tmp_path / "docstore.pklz4"),
            ),
            JsonlQueries(
                LocalDownload(data.queries), query_cls=GenericQuery, mapping={"query_id": "_id", "text": "text"}
            ),
            TrecQrels(LocalDownload(data.qrels), {0: "not", 1: "partly", 2: "relevant"}),
        ),
    )
    shutil.copy(reference[1], tmp_path / "judgments.jsonl")  # same texts, so every judgment is kept
    result = rerank_run(
        data.run,
        corpus=f"irds:{name}",
        queries=f"irds:{name}",
        out=tmp_path / "out.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
        qrels=f"irds:{name}",
        measures=["nDCG@10"],
    )
    assert result.summary.judged_now == 0
    assert result.summary.judged == result.summary.pairs
    assert trec(result.out) == trec(reference[0])
    assert result.metrics is not None
    assert 0.0 < result.metrics["rank1"]["nDCG@10"] <= 1.0


# -- vLLM servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.fixture(scope="module")
def embedded_scripted(scripted_reranker: Rank1Reranker, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return rerun(tiny_set(), tmp_path_factory.mktemp("scripted"), scripted_reranker)


@pytest.fixture
def proxy(server: VLLMServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.root_url) as running:
        yield running


def servers(server: VLLMServer, *urls: str, **transport: object) -> Rank1Settings:
    urls = urls or (server.base_url,)
    return Rank1Settings(
        servers=urls,
        model=server.model,
        max_reasoning_tokens=SCRIPTED_BUDGET,
        max_concurrency=4 * len(urls),
        **{"initial_backoff": 0.02, "max_backoff": 0.2, **transport},
    )


def test_a_server_fleet_judges_as_the_embedded_engine_and_every_server_works(
    server: VLLMServer, proxy: FaultProxy, tmp_path: Path, embedded_scripted: tuple[Path, Path]
):
    got = rerun(tiny_set(), tmp_path, servers(server, server.base_url, proxy.base_url), max_in_flight=16)
    assert_same_outputs(got, embedded_scripted, REMOTE_TOLERANCE)
    assert set(proxy.outcomes()) == {"ok"}
    # Requests are not pairs (a forced answer is a second request; a request may carry several
    # prompts): count the reasoning prompts, one per pair judged through the proxy.
    reasoning_prompts = sum(len(body["prompt"]) for body in proxy.bodies() if body["max_tokens"] != 1)
    assert 0 < reasoning_prompts < len(records(got[1]))  # the fleet shared the work


def test_server_failures_are_recorded_and_only_they_are_judged_again(
    server: VLLMServer, proxy: FaultProxy, tmp_path: Path, embedded_scripted: tuple[Path, Path]
):
    proxy.add(Fault("status", times=3, status=503))
    with pytest.raises(IncompleteRunError) as caught:
        rerun(tiny_set(), tmp_path, servers(server, proxy.base_url, max_retries=0), max_in_flight=1)
    failed = [r for r in records(tmp_path / "judgments.jsonl") if r["error"] is not None]
    assert len(failed) == caught.value.failed >= 1
    assert all("503" in str(r["error"]) and r["score"] is None for r in failed)
    proxy.clear()
    result = rerank_run(
        tiny_set().run,
        corpus=tiny_set().corpus,
        queries=tiny_set().queries,
        out=tmp_path / "out.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=servers(server, proxy.base_url),
        depth=DEPTH,
    )
    assert (result.summary.judged_now, result.summary.failed) == (len(failed), 0)
    # each pair costs one reasoning request, plus one when its answer is forced
    assert len(failed) <= len(proxy.outcomes()) <= 2 * len(failed)
    assert_same_outputs((tmp_path / "out.trec", tmp_path / "judgments.jsonl"), embedded_scripted, REMOTE_TOLERANCE)


def test_a_slow_server_in_the_fleet_gets_less_work_than_a_fast_one(
    server: VLLMServer, proxy: FaultProxy, tmp_path: Path, embedded_scripted: tuple[Path, Path]
):
    """Requests waiting for a place in flight choose their server when they go, so the fast one takes the rest
    (chosen while waiting, they would be split evenly, and the run would wait on the slow server)."""
    proxy.add(Fault("delay", times=-1, delay=6.0))  # every request through this one takes 6 s more
    with FaultProxy(server.root_url) as fast:
        engine = Rank1Settings(
            servers=(proxy.base_url, fast.base_url),
            model=server.model,
            max_reasoning_tokens=SCRIPTED_BUDGET,
            max_concurrency=2,
        )
        got = rerun(tiny_set(), tmp_path, engine, max_in_flight=16)  # 2 requests in flight, 14 waiting
        slow_requests, fast_requests = len(proxy.outcomes()), len(fast.outcomes())
    assert_same_outputs(got, embedded_scripted, REMOTE_TOLERANCE)
    # chosen while waiting, the slow server gets about half of them (measured: 30 against 49)
    assert 1 <= slow_requests <= fast_requests / 4
