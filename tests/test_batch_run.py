"""``rerank_run`` in this process on real engines: the embedded engine and vLLM servers on the tiny models.

The runner's judgments are checked against ``judge`` on the same passages, resuming is
checked against an uninterrupted run, and failures, other settings and changed texts
against what the checkpoint holds afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rank1_integrations import CheckpointError, IncompleteRunError, Rank1Reranker
from rank1_integrations.batch import ServerEngine, rerank_run
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


def test_failed_pairs_are_recorded_never_scored_and_retried_on_resume(
    random_reranker: Rank1Reranker, tmp_path: Path, reference: tuple[Path, Path]
):
    data = tiny_set()
    broken = tmp_path / "corpus.jsonl"
    lines = [json.loads(line) for line in data.corpus.read_text().splitlines()]
    for doc in lines:
        if doc["_id"] == "json.dumps#1":
            doc["title"], doc["text"] = "", "   "  # nothing rank1 can judge
    broken.write_text("".join(json.dumps(doc) + "\n" for doc in lines))
    occurrences = [qid for qid, docs in first_stage(data.run).items() for d in docs[:DEPTH] if d == "json.dumps#1"]
    assert occurrences

    with pytest.raises(IncompleteRunError) as caught:
        rerun(RunSet(data.run, broken, data.queries), tmp_path, random_reranker)
    assert (caught.value.failed, caught.value.total) == (len(occurrences), len(records(reference[1])))
    assert not (tmp_path / "out.trec").exists()
    failed = [r for r in records(tmp_path / "judgments.jsonl") if r["error"] is not None]
    assert [(r["qid"], r["docid"]) for r in failed] == [(q, "json.dumps#1") for q in occurrences]
    assert all(r["score"] is None and r["relevant"] is None for r in failed)
    assert all(str(r["error"]).startswith("InvalidInputError: ") and "empty" in str(r["error"]) for r in failed)

    allowed = rerank_run(
        data.run,
        corpus=broken,
        queries=data.queries,
        out=tmp_path / "allowed.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
        allow_failures=True,
    )
    assert (allowed.summary.failed, allowed.summary.judged_now, allowed.summary.failed_now) == (
        len(occurrences),
        0,
        len(occurrences),
    )
    ranking = trec(tmp_path / "allowed.trec")
    for qid in occurrences:
        top = first_stage(data.run)[qid][:DEPTH]
        assert ranking[qid].index("json.dumps#1") == len(top) - 1  # below every judged document of its query

    fixed = rerank_run(
        data.run,
        corpus=data.corpus,
        queries=data.queries,
        out=tmp_path / "out.trec",
        reasoning=tmp_path / "judgments.jsonl",
        engine=random_reranker,
        depth=DEPTH,
    )
    assert (fixed.summary.judged_now, fixed.summary.failed) == (len(occurrences), 0)
    assert_same_outputs((tmp_path / "out.trec", tmp_path / "judgments.jsonl"), reference)


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


def servers(server: VLLMServer, *urls: str, **backend_kwargs: object) -> ServerEngine:
    return ServerEngine(
        urls or (server.base_url,),
        server.model,
        max_reasoning_tokens=SCRIPTED_BUDGET,
        concurrency_per_server=4,
        backend_kwargs={"initial_backoff": 0.02, "max_backoff": 0.2, **backend_kwargs},
    )


def test_a_server_fleet_judges_as_the_embedded_engine_and_every_server_works(
    server: VLLMServer, proxy: FaultProxy, tmp_path: Path, embedded_scripted: tuple[Path, Path]
):
    got = rerun(tiny_set(), tmp_path, servers(server, server.base_url, proxy.base_url), max_in_flight=16)
    assert_same_outputs(got, embedded_scripted, REMOTE_TOLERANCE)
    through_proxy = proxy.outcomes()
    assert 0 < len(through_proxy) < len(records(got[1]))  # the fleet shared the work
    assert set(through_proxy) == {"ok"}


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
        engine = ServerEngine(
            (proxy.base_url, fast.base_url),
            server.model,
            max_reasoning_tokens=SCRIPTED_BUDGET,
            concurrency_per_server=1,
        )
        got = rerun(tiny_set(), tmp_path, engine, max_in_flight=16)  # 2 requests in flight, 14 waiting
        slow_requests, fast_requests = len(proxy.outcomes()), len(fast.outcomes())
    assert_same_outputs(got, embedded_scripted, REMOTE_TOLERANCE)
    # chosen while waiting, the slow server gets about half of them (measured: 30 against 49)
    assert 1 <= slow_requests <= fast_requests / 4
