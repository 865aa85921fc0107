"""The batch runner's parts without an engine: inputs, records, the checkpoint, the plan, the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rank1_integrations import BackendError, InvalidInputError, Judgment
from rank1_integrations.batch import checkpoint as checkpoint_module
from rank1_integrations.batch.checkpoint import Checkpoint, CheckpointError, PairState
from rank1_integrations.batch.inputs import JsonlCorpus, passage_text, read_queries, read_run
from rank1_integrations.batch.outputs import read_trec, reranked, write_trec
from rank1_integrations.batch.plan import Plan, WorkUnit
from rank1_integrations.batch.records import PairRecord, RunSettings, text_digest
from tests.batch_support import REPO, tiny_set

SETTINGS = RunSettings("model-a", None, 16, 1024)


def record(qid: str, docid: str, score: float | None = 0.5, *, settings: str = SETTINGS.fingerprint) -> PairRecord:
    return PairRecord(
        qid=qid,
        docid=docid,
        score=score,
        relevant=None if score is None else score > 0.5,
        forced=False,
        reasoning_tokens=3,
        reasoning="" if score is None else f"reasoning about {docid}",
        truncated=False,
        error="BackendError: down" if score is None else None,
        settings=settings,
        text_digest="d" * 16,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- inputs ---------------------------------------------------------------------------------


def test_run_is_read_query_by_query_in_first_stage_order(tmp_path: Path):
    run = write(
        tmp_path / "r.run",
        "q1 Q0 a 3 1.5 x\nq1 Q0 b 1 2.5 x\nq1 Q0 c 2 1.5 x\n\nq2 Q0 d 1 9 x\nq1x Q0 e 1 1 x\n",
    )
    # score first; the tie between a and c goes to the rank column (c is rank 2)
    assert [(r.qid, r.docids) for r in read_run(run)] == [("q1", ("b", "c", "a")), ("q2", ("d",)), ("q1x", ("e",))]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q1 Q0 a 1 1 x\nq2 Q0 b 1 1 x\nq1 Q0 c 2 1 x\n", "comes back after other queries; group"),
        ("q1 Q0 a 1 1 x\nq1 Q0 a 2 0.5 x\n", "lists documents more than once: ['a']"),
        ("q1 Q0 a 1 1\n", "r.run:1: a TREC run line has 6 columns"),
        ("q1 Q0 a 1 high x\n", "r.run:1: 'high' is not a valid float"),
        ("q1 Q0 a 1 nan x\n", "is not a finite number"),
    ],
)
def test_bad_runs_are_refused_with_the_line(tmp_path: Path, text: str, message: str):
    with pytest.raises(InvalidInputError, match=None) as caught:
        list(read_run(write(tmp_path / "r.run", text)))
    assert message in str(caught.value)


def test_corpus_is_indexed_on_disk_and_read_by_id(tmp_path: Path):
    corpus = write(
        tmp_path / "c.jsonl",
        '{"_id": "a", "title": "T", "text": "first"}\n\n{"_id": 7, "text": "seventh"}\n{"_id": "b", "title": "only"}\n',
    )
    index = JsonlCorpus(corpus, tmp_path / "index.sqlite")
    try:
        assert index.texts(["b", "7", "zz", "a"]) == {"a": "T first", "7": "seventh", "b": "only"}
        assert index.missing(["a", "zz", "7", "yy"]) == ["zz", "yy"]
    finally:
        index.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "c.jsonl:2: document id 'a' appears twice"),
        ('{"_id": "a", "text": "x"}\nnot json\n', "c.jsonl:2: not a JSON object"),
        ('{"text": "x"}\n', "c.jsonl:1: a corpus line needs an '_id'"),
    ],
)
def test_bad_corpora_are_refused(tmp_path: Path, text: str, message: str):
    with pytest.raises(InvalidInputError) as caught:
        JsonlCorpus(write(tmp_path / "c.jsonl", text), tmp_path / "index.sqlite")
    assert message in str(caught.value)


def test_passages_and_queries():
    assert passage_text("  Title ", " text ") == "Title text"
    assert passage_text(None, "text") == "text"
    assert passage_text("", 3) == ""
    queries = read_queries(tiny_set().queries)
    assert len(queries) == 10
    assert queries["q1"] == "How do I serialize a Python object to a JSON string?"


def test_duplicate_queries_are_refused(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="query id 'q' appears more than once"):
        read_queries(write(tmp_path / "q.jsonl", '{"_id": "q", "text": "a"}\n{"_id": "q", "text": "b"}\n'))


# -- records --------------------------------------------------------------------------------


def test_records_round_trip_and_are_validated():
    judged = record("q", "d", 0.75)
    assert PairRecord.from_json(judged.to_json()) == judged
    failed = record("q", "d", None)
    assert PairRecord.from_json(failed.to_json()) == failed
    assert not failed.judged
    assert judged.judged
    for broken in (
        '["not", "an", "object"]',
        json.dumps({**json.loads(judged.to_json()), "score": 1.5}),
        json.dumps({**json.loads(judged.to_json()), "relevant": None}),
        json.dumps({**json.loads(failed.to_json()), "score": 0.5}),
        json.dumps({**json.loads(judged.to_json()), "extra": 1}),
        json.dumps({k: v for k, v in json.loads(judged.to_json()).items() if k != "qid"}),
    ):
        with pytest.raises(ValueError, match=r"."):
            PairRecord.from_json(broken)


def failure(qid: str, docid: str, error: Exception, *, settings: str, digest: str) -> PairRecord:
    """The record of a passage the reranker handed over unjudged with ``error``."""
    unjudged = Judgment(0, None, None, "", error=f"{type(error).__name__}: {error}", reasoned=False)
    return PairRecord.of(qid, docid, unjudged, settings=settings, digest=digest)


def test_invalid_input_is_marked_on_its_record_and_old_lines_without_the_mark_still_read():
    invalid = failure("q", "d", InvalidInputError("query is empty"), settings="s", digest="t")
    assert (invalid.invalid, invalid.error) == (True, "InvalidInputError: query is empty")
    assert PairRecord.from_json(invalid.to_json()) == invalid
    assert not failure("q", "d", BackendError("down"), settings="s", digest="t").invalid
    old = {k: v for k, v in json.loads(record("q", "d", None).to_json()).items() if k != "invalid"}
    assert not PairRecord.from_json(json.dumps(old)).invalid  # a checkpoint written before the mark existed
    with pytest.raises(ValueError, match="an invalid record has an error"):
        PairRecord.from_json(json.dumps({**json.loads(record("q", "d").to_json()), "invalid": True}))


def test_a_judgment_becomes_a_record():
    unjudged = Judgment(index=0, score=None, relevant=None, reasoning="", error="BackendError: x")
    assert PairRecord.of("q", "d", unjudged, settings="s", digest="t").error == "BackendError: x"
    judged = Judgment(index=0, score=0.25, relevant=False, reasoning="r", forced=True, reasoning_tokens=9)
    made = PairRecord.of("q", "d", judged, settings="s", digest="t")
    assert (made.score, made.relevant, made.forced, made.reasoning_tokens, made.error) == (0.25, False, True, 9, None)


def test_settings_fingerprint_and_differences():
    other = RunSettings("model-a", "Claim: FILL_QUERY_HERE", 32, 1024)
    assert SETTINGS.fingerprint == RunSettings("model-a", None, 16, 1024).fingerprint != other.fingerprint
    assert SETTINGS.differences(other) == [
        "template: None != 'Claim: FILL_QUERY_HERE'",
        "max_reasoning_tokens: 16 != 32",
    ]
    assert RunSettings.from_dict(other.to_dict()) == other
    # Full reasoning keeps the fingerprints of checkpoints written before efforts existed.
    assert (SETTINGS.fingerprint, other.fingerprint) == ("ed52f6a4cff36a2d", "aaaf13aaee7773b0")
    no_think = RunSettings("model-a", None, 16, 1024, "none", "Okay.")
    assert RunSettings.from_dict(no_think.to_dict()) == no_think
    assert no_think.fingerprint != SETTINGS.fingerprint
    assert SETTINGS.differences(no_think) == ["reasoning_effort: 'full' != 'none'", "no_think_prefill: None != 'Okay.'"]
    assert text_digest("q", "p") != text_digest("q ", "p") != text_digest("q", " p")


# -- the checkpoint -------------------------------------------------------------------------


def test_checkpoint_appends_reads_back_and_keeps_judged_records(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    with Checkpoint(path) as checkpoint:
        assert checkpoint.fingerprint is None
        checkpoint.check(SETTINGS)
        checkpoint.append([record("q", "a", 0.9), record("q", "b", None)])
        checkpoint.append([record("q", "b", 0.2), record("q", "a", 0.1)])  # a retry, and a repeat of a judged pair
        states = checkpoint.states("q", ["a", "b", "c"])
    assert set(states) == {"a", "b"}
    assert (states["a"].judged, states["a"].score) == (True, 0.9)  # judged records are final
    assert (states["b"].judged, states["b"].score) == (True, 0.2)  # a failure gives way to the retry
    assert json.loads((tmp_path / "j.jsonl.settings.json").read_text())["settings"] == SETTINGS.to_dict()
    assert not (tmp_path / "j.jsonl.work").exists()
    with Checkpoint(path) as again:
        assert again.records == 4
        assert again.fingerprint == SETTINGS.fingerprint
        assert again.states("q", ["a", "b"]) == {
            "a": PairState(True, 0.9, False, "d" * 16, 0),
            "b": PairState(True, 0.2, False, "d" * 16, states["b"].offset),
        }


@pytest.mark.parametrize("cut", [-7, -1, 3])  # killed mid-write; just before the newline; 3 bytes in
@pytest.mark.parametrize("before", [0, 1])
def test_a_torn_last_line_is_dropped_and_the_next_append_follows_the_last_whole_line(
    tmp_path: Path, cut: int, before: int
):
    path = tmp_path / "j.jsonl"
    whole = "".join(record("q", f"a{i}", 0.9).to_json() + "\n" for i in range(before))
    path.write_text(whole + (record("q", "b", 0.3).to_json() + "\n")[:cut])
    with Checkpoint(path) as checkpoint:
        assert checkpoint.records == before
        assert "b" not in checkpoint.states("q", ["a0", "b"])
        checkpoint.check(SETTINGS)
        checkpoint.append([record("q", "b", 0.3)])
    assert path.read_text() == whole + record("q", "b", 0.3).to_json() + "\n"


CORPUS_LINE = '{"_id": "d1", "title": "A title", "text": "A passage."}'


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (CORPUS_LINE + "\n", 1),  # a one-line corpus passed as the checkpoint
        (CORPUS_LINE, 1),  # ... without its final newline: it cannot be the start of a record
        ("q1 Q0 d1 1 12.5 bm25", 1),
        (record("q", "a").to_json() + "\n{oops\n" + record("q", "b").to_json() + "\n", 2),
        (record("q", "a").to_json() + "\n" + record("q", "b").to_json()[:-9] + "\n", 2),  # a whole line, corrupt
        (record("q", "a").to_json() + '\n{"qid": "q", "docid": "b"}', 2),  # whole JSON, not a record
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused_naming_the_line_and_left_as_it_was(
    tmp_path: Path, text: str, line: int
):
    path = write(tmp_path / "j.jsonl", text)
    with pytest.raises(CheckpointError, match=rf"j\.jsonl:{line} is not a judgment record"):
        Checkpoint(path)
    assert path.read_text() == text
    assert os.listdir(tmp_path) == ["j.jsonl"]  # nothing written beside it either


def test_other_settings_are_refused_naming_what_differs(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    with Checkpoint(path) as checkpoint:
        checkpoint.check(SETTINGS)
        checkpoint.append([record("q", "a")])
    with Checkpoint(path) as checkpoint:
        with pytest.raises(CheckpointError, match=r"max_reasoning_tokens: 16 != 64") as caught:
            checkpoint.check(RunSettings("model-a", None, 64, 1024))
        assert "model" not in str(caught.value).split("this run:")[1].split("max_reasoning")[0]
        with pytest.raises(CheckpointError, match="a judgment was made with settings"):
            checkpoint.append([record("q", "b", settings=RunSettings("model-b", None, 16, 1024).fingerprint)])
    (tmp_path / "j.jsonl.settings.json").unlink()  # without the settings file: the fingerprints
    with Checkpoint(path) as checkpoint, pytest.raises(CheckpointError, match="settings fingerprint"):
        checkpoint.check(RunSettings("model-b", None, 16, 1024))


def test_a_file_mixing_settings_is_refused(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    other = RunSettings("model-b", None, 16, 1024).fingerprint
    path.write_text(record("q", "a").to_json() + "\n" + record("q", "b", settings=other).to_json() + "\n")
    with pytest.raises(CheckpointError, match="mixes runs"):
        Checkpoint(path)


def test_a_second_run_on_the_same_file_is_refused_while_the_first_holds_it(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    with Checkpoint(path) as first:
        first.check(SETTINGS)
        with pytest.raises(CheckpointError, match="another run is writing"):
            Checkpoint(path)
        assert (tmp_path / "j.jsonl.work").is_dir()  # the first run's scratch space survives the refusal
    with Checkpoint(path):
        pass
    assert sorted(os.listdir(tmp_path)) == ["j.jsonl", "j.jsonl.settings.json"]  # lock file and work folder gone


def test_compaction_never_lets_a_second_run_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A second run tries to start at the worst moment: the compacted file has just replaced the locked one."""
    path = tmp_path / "j.jsonl"
    replace = os.replace
    attempts: list[str] = []

    def replace_then_start_a_second_run(source: object, target: object) -> None:
        replace(source, target)  # type: ignore[arg-type]
        if str(source).endswith(".compacting"):
            try:
                Checkpoint(path).close()
                attempts.append("started")
            except CheckpointError as err:
                attempts.append(str(err))

    with Checkpoint(path) as first:
        first.check(SETTINGS)
        first.append([record("q", "b", 0.2), record("q", "a", 0.9)])
        monkeypatch.setattr(checkpoint_module.os, "replace", replace_then_start_a_second_run)
        first.compact([("q", ["a", "b"])])
        monkeypatch.undo()
        assert len(attempts) == 1
        assert "another run is writing" in attempts[0]
        assert (tmp_path / "j.jsonl.work" / "state.sqlite").is_file()  # the first run's index is still there
        first.append([record("q", "c", 0.5)])  # and it goes on
        assert set(first.states("q", ["a", "b", "c"])) == {"a", "b", "c"}
    with Checkpoint(path) as again:
        assert again.records == 3


def test_a_write_that_fails_leaves_the_checkpoint_closed_and_resumable(tmp_path: Path):
    """A real failing write: a file size limit, as a full disk would stop it (in a process of its own)."""
    path = tmp_path / "j.jsonl"
    script = f"""
        import resource, signal, sys
        from pathlib import Path
        from rank1_integrations.batch.checkpoint import Checkpoint
        from tests.test_batch_pieces import SETTINGS, record

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        checkpoint = Checkpoint(Path({str(path)!r}))
        checkpoint.check(SETTINGS)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
        appended = 0
        try:
            while True:
                checkpoint.append([record("q", f"d{{appended}}", 0.5)])
                appended += 1
        except OSError as err:
            print(appended, err.errno)
        checkpoint.close()
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr  # closing raised nothing
    appended, errno = map(int, result.stdout.split())
    assert errno == 27  # EFBIG
    assert path.stat().st_size == 20000  # the last append was cut short
    assert sorted(os.listdir(tmp_path)) == ["j.jsonl", "j.jsonl.settings.json"]
    with Checkpoint(path) as again:  # the torn last line is dropped; every whole line is kept
        assert again.records == appended
        again.check(SETTINGS)
        again.append([record("q", f"d{appended}", 0.5)])
    assert len(path.read_text().splitlines()) == appended + 1


def test_compaction_writes_one_line_per_pair_in_run_order_then_the_others(tmp_path: Path):
    path = tmp_path / "j.jsonl"
    (tmp_path / "j.jsonl.compacting").write_text("left by a killed run")
    with Checkpoint(path) as checkpoint:
        assert not (tmp_path / "j.jsonl.compacting").exists()
        checkpoint.check(SETTINGS)
        checkpoint.append([record("q2", "x", 0.4), record("q1", "b", None), record("old", "z", 0.6)])
        checkpoint.append([record("q1", "a", 0.8), record("q1", "b", 0.1)])
        checkpoint.compact([("q1", ["a", "b", "c"]), ("q2", ["x"])])
        lines = [PairRecord.from_json(line) for line in path.read_text().splitlines()]
        assert [(r.qid, r.docid, r.score) for r in lines] == [
            ("q1", "a", 0.8),
            ("q1", "b", 0.1),
            ("q2", "x", 0.4),
            ("old", "z", 0.6),
        ]
        checkpoint.append([record("q3", "y", 0.3)])  # the index follows the new file
        assert (
            checkpoint.read(checkpoint.states("q2", ["x"])["x"].offset)
            == (record("q2", "x", 0.4).to_json() + "\n").encode()
        )
    with Checkpoint(path) as checkpoint:
        assert checkpoint.records == 5


# -- the plan and the outputs ----------------------------------------------------------------


def test_pairs_refused_as_invalid_input_are_judged_again_only_when_their_texts_change(tmp_path: Path):
    run = write(tmp_path / "r.run", "q1 Q0 a 1 3 x\nq1 Q0 b 2 2 x\nq1 Q0 c 3 1 x\n")
    corpus = write(tmp_path / "c.jsonl", "".join(json.dumps({"_id": d, "text": f"text {d}"}) + "\n" for d in "abc"))
    refusal = InvalidInputError("passages at indices [0] are empty")
    index = JsonlCorpus(corpus, tmp_path / "index.sqlite")
    try:
        with Checkpoint(tmp_path / "j.jsonl") as checkpoint:
            checkpoint.check(SETTINGS)
            checkpoint.append(
                [
                    failure("q1", "a", refusal, settings=SETTINGS.fingerprint, digest=text_digest("q", "text a")),
                    failure("q1", "b", refusal, settings=SETTINGS.fingerprint, digest=text_digest("q", "old b")),
                    failure("q1", "c", BackendError("503"), settings=SETTINGS.fingerprint, digest="d" * 16),
                ]
            )
            plan = Plan(run, queries={"q1": "q"}, corpus=index, checkpoint=checkpoint, depth=None)
            survey = plan.survey()
            # a: the same texts, not judged again; b: its passage changed since; c: failed, retried
            assert (survey.pairs, survey.judged, survey.invalid, survey.failed, survey.remaining) == (3, 0, 1, 2, 2)
            assert [unit.docids for unit in plan.units(max_pairs=10)] == [("b", "c")]
    finally:
        index.close()


def test_plan_counts_the_work_and_refuses_missing_or_changed_inputs(tmp_path: Path):
    run = write(tmp_path / "r.run", "q1 Q0 a 1 3 x\nq1 Q0 b 2 2 x\nq1 Q0 c 3 1 x\nq2 Q0 a 1 1 x\n")
    corpus = write(tmp_path / "c.jsonl", "".join(json.dumps({"_id": d, "text": f"text {d}"}) + "\n" for d in "abc"))
    queries = {"q1": "first", "q2": "second"}
    index = JsonlCorpus(corpus, tmp_path / "index.sqlite")
    done = PairRecord.of(
        "q1",
        "b",
        Judgment(index=0, score=0.5, relevant=True, reasoning="r"),
        settings=SETTINGS.fingerprint,
        digest=text_digest("first", "text b"),
    )
    try:
        with Checkpoint(tmp_path / "j.jsonl") as checkpoint:
            checkpoint.check(SETTINGS)
            checkpoint.append([done, record("q2", "a", None)])
            plan = Plan(run, queries=queries, corpus=index, checkpoint=checkpoint, depth=2)
            survey = plan.survey()
            assert (survey.queries, survey.pairs, survey.judged, survey.failed, survey.remaining) == (2, 3, 1, 1, 2)
            units = list(plan.units(max_pairs=1))
            assert units == [
                WorkUnit("q1", "first", ("a",), ("text a",)),
                WorkUnit("q2", "second", ("a",), ("text a",)),
            ]
            changed = Plan(run, queries={**queries, "q1": "changed"}, corpus=index, checkpoint=checkpoint, depth=2)
            with pytest.raises(CheckpointError, match=r"judged 1 pairs on other texts .*\['q1/b'\]"):
                changed.survey()
            with pytest.raises(
                InvalidInputError, match=r"1 queries of the run are not in the queries file, e\.g\. \['q2'\]"
            ):
                Plan(run, queries={"q1": "first"}, corpus=index, checkpoint=checkpoint, depth=2).survey()
            deeper = write(tmp_path / "d.run", "q1 Q0 a 1 3 x\nq1 Q0 zz 2 2 x\n")
            with pytest.raises(
                InvalidInputError, match=r"1 documents of the run are not in the corpus, e\.g\. \['q1/zz'\]"
            ):
                Plan(deeper, queries=queries, corpus=index, checkpoint=checkpoint, depth=2).survey()
            with pytest.raises(InvalidInputError, match="depth must be a positive int"):
                Plan(run, queries=queries, corpus=index, checkpoint=checkpoint, depth=0)
    finally:
        index.close()


def test_reranked_order_ties_unjudged_and_below_the_depth():
    def state(score: float | None) -> PairState:
        return PairState(score is not None, score, False, "", 0)

    states = {"a": state(0.2), "b": state(0.9), "c": state(0.2), "d": state(None)}
    # b best; a and c tie, so first-stage order; unjudged d after them; e, f below the depth as they were
    assert reranked(["a", "b", "c", "d", "e", "f"], ["a", "b", "c", "d"], states) == ["b", "a", "c", "d", "e", "f"]


def test_trec_is_written_with_falling_scores_and_read_back(tmp_path: Path):
    path = tmp_path / "out.trec"
    write_trec(path, [("q1", ["b", "a"]), ("q2", ["c"])])
    assert path.read_text() == "q1 Q0 b 1 2 rank1\nq1 Q0 a 2 1 rank1\nq2 Q0 c 1 1 rank1\n"
    assert list(read_trec(path)) == [("q1", ["b", "a"]), ("q2", ["c"])]
