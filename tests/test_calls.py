"""One call's plan and its end: failure policy, the cache, bad input (pure logic, no engine)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import Future

import pytest

from rank1_integrations.backends.base import Completion
from rank1_integrations.cache import DiskCache, GuardedCache, MemoryCache, cache_key
from rank1_integrations.core.calls import plan_call, validated
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PromptBuilder
from rank1_integrations.core.protocol import STOP_STRINGS
from rank1_integrations.core.tokenization import HFPromptTokenizer
from rank1_integrations.driver import CallDriver, drive
from rank1_integrations.errors import BackendError, InvalidInputError, ModelOutputError, PassagesFailedError
from rank1_integrations.settings import Rank1Settings

TRUE_ID, FALSE_ID = 101, 102
BUDGET = 30


@pytest.fixture(scope="module")
def builder(hf_tokenizer) -> PromptBuilder:
    return PromptBuilder(HFPromptTokenizer(hf_tokenizer), template=None, max_prompt_tokens=500)


def _key(query: str, passage: str, effort: str = "full") -> str:
    return cache_key(
        model="m",
        template=None,
        query=query,
        passage=passage,
        max_reasoning_tokens=BUDGET,
        context_size=1,
        how=(effort,),
    )


def _plan(builder, batches, cache):
    return plan_call(
        batches,
        builder,
        label_token_ids=(TRUE_ID, FALSE_ID),
        settings=Rank1Settings.model_construct(max_reasoning_tokens=BUDGET),
        cache=cache,
        key_for=_key,
    )


def _answer(relevant: bool) -> Completion:
    label, stop = (TRUE_ID, STOP_STRINGS[0]) if relevant else (FALSE_ID, STOP_STRINGS[1])
    return Completion((7, label), "Reasons.", "stop", stop, (-0.1, -2.0) if relevant else (-2.0, -0.1))


class _ComputedBackend:
    """Answers each request at once with ``results_for(prompt_token_ids)`` (pure logic under test, no engine)."""

    def __init__(self, results_for) -> None:
        self.results_for = results_for

    def submit(self, requests, on_result) -> Future:
        for position, request in enumerate(requests):
            on_result(position, self.results_for(request.prompt_token_ids))
        done: Future = Future()
        done.set_result(None)
        return done


def _judge(plan, results_for, on_failure="raise", cache=None):
    driver = CallDriver(plan, _ComputedBackend(results_for), on_failure=on_failure, cache=cache)
    for _ in drive(driver):
        pass
    return driver.finish()


def test_a_failed_call_keeps_every_success_and_caches_it(builder) -> None:
    passages = [f"passage number {i}" for i in range(10)]
    failing = builder.build("q", passages[3]).token_ids
    cache = GuardedCache(MemoryCache())
    plan = _plan(builder, [("q", passages)], cache)
    with pytest.raises(PassagesFailedError) as caught:
        _judge(plan, lambda ids: BackendError("503") if ids == failing else _answer(True), cache=cache)
    error = caught.value
    assert [(f.batch, f.index) for f in error.failures] == [(0, 3)]
    assert "1 of 10 passages" in str(error)
    assert [j is None for j in error.judgments] == [i == 3 for i in range(10)]
    assert [j.index for j in error.judgments if j is not None] == [i for i in range(10) if i != 3]
    assert error.batches == [error.judgments]
    # The caller's retry judges only the passage that failed.
    again = _plan(builder, [("q", passages)], cache)
    assert again.fresh == [(0, 3)]
    judgments = _judge(again, lambda ids: _answer(False), cache=cache)[0]
    assert [j.relevant for j in judgments] == [i != 3 for i in range(10)]
    assert [j.index for j in judgments] == list(range(10))


def test_mark_unjudged_returns_failures_in_place(builder) -> None:
    plan = _plan(builder, [("q", ["a", "b"]), ("r", ["c"])], None)
    failing = builder.build("q", "b").token_ids
    results_for = lambda ids: ModelOutputError("no logprobs") if ids == failing else _answer(True)  # noqa: E731
    (first, second), (third,) = _judge(plan, results_for, "mark_unjudged")
    assert (first.judged, second.judged, third.judged) == (True, False, True)
    assert (second.index, second.score, second.relevant) == (1, None, None)
    assert second.error == "ModelOutputError: no logprobs"
    assert third.index == 0


def test_judge_many_failures_name_their_batch(builder) -> None:
    plan = _plan(builder, [("q", ["a"]), ("r", ["b", "c"])], None)
    failing = builder.build("r", "c").token_ids
    with pytest.raises(PassagesFailedError, match="1:1") as caught:
        _judge(plan, lambda ids: BackendError("boom") if ids == failing else _answer(True))
    assert [len(batch) for batch in caught.value.batches] == [1, 2]
    assert caught.value.batches[1][1] is None
    assert [j is None for j in caught.value.judgments] == [False, False, True]


class _FlakyTokenizer(HFPromptTokenizer):
    """The test tokenizer, except that any text holding "unlucky" fails like a dead tokenizer server."""

    def encode_plain(self, text: str) -> list[int]:
        if "unlucky" in text:
            raise BackendError("POST /tokenize: 503")
        return super().encode_plain(text)


def test_a_prompt_that_cannot_be_built_fails_only_its_passage(hf_tokenizer) -> None:
    flaky = PromptBuilder(_FlakyTokenizer(hf_tokenizer), template=None, max_prompt_tokens=500)
    plan = _plan(flaky, [("q", ["fine", "unlucky one", "fine too"])], None)
    judged, unjudged, judged_too = _judge(plan, lambda ids: _answer(True), "mark_unjudged")[0]
    assert judged.judged
    assert judged_too.judged
    assert not unjudged.judged
    assert "503" in (unjudged.error or "")
    # Bad input is still the caller's error for the whole call.
    tight = PromptBuilder(_FlakyTokenizer(hf_tokenizer), template=None, max_prompt_tokens=20)
    with pytest.raises(InvalidInputError, match="query and instructions alone"):
        _judge(_plan(tight, [("a query far too long " * 10, ["p"])], None), lambda ids: _answer(True))


def test_lone_surrogates_are_rejected_before_anything_is_sent() -> None:
    with pytest.raises(InvalidInputError, match=r"indices \[1\]"):
        validated([("q", ["fine", "x \ud800", "fine"])])
    with pytest.raises(InvalidInputError, match="query"):
        validated([("q \udfff", ["fine"])])
    assert validated([("q", ["emoji 🙂 and accents é"])])


# -- caches ----------------------------------------------------------------------------------


class _BrokenCache:
    def __repr__(self) -> str:
        return "BrokenCache()"

    def get_many(self, keys):
        raise sqlite3.OperationalError("database is locked")

    def put_many(self, items):
        raise OSError("disk full")


def test_a_failing_cache_costs_only_a_miss_and_warns_once(builder, caplog) -> None:
    cache = GuardedCache(_BrokenCache())
    caplog.set_level(logging.DEBUG, logger="rank1_integrations.cache")
    for _ in range(3):
        plan = _plan(builder, [("q", ["a", "b"])], cache)
        assert len(plan.fresh) == 2
        assert all(j.judged for j in _judge(plan, lambda ids: _answer(True), cache=cache)[0])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "database is locked" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG and "disk full" in r.getMessage()]) == 3


def test_a_cache_never_returns_or_stores_a_broken_judgment() -> None:
    good = Judgment(index=0, score=0.7, relevant=True, reasoning="r")
    planted = {
        "nan": dataclasses.replace(good, score=math.nan),
        "text": dataclasses.replace(good, score="NOT A NUMBER"),  # type: ignore[arg-type]
        "above": dataclasses.replace(good, score=1.5),
        "unjudged": dataclasses.replace(good, score=None, relevant=None, error="x"),
        "not-a-judgment": {"score": 0.5},
        "good": good,
    }

    class Planted:
        def get_many(self, keys):
            return planted

        def put_many(self, items):
            planted.update(items)

    guarded = GuardedCache(Planted())
    assert guarded.get_many(list(planted)) == {"good": good}
    planted.clear()
    guarded.put_many({"nan": dataclasses.replace(good, score=math.nan), "good": good})
    assert planted == {"good": good}


def test_disk_cache_ignores_rows_it_did_not_write(tmp_path) -> None:
    cache = DiskCache(tmp_path / "c.sqlite")
    good = Judgment(index=0, score=0.25, relevant=False, reasoning="no")
    cache.put_many({"good": good})
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        planted = dataclasses.asdict(good) | {"score": "NOT A NUMBER"}
        db.executemany(
            "INSERT INTO judgments VALUES (?, ?)",
            [
                ("planted", json.dumps(planted)),
                ("other-shape", json.dumps({"score": 0.5, "extra": 1})),
                ("not-json", "{"),
                ("nan", json.dumps(dataclasses.asdict(good) | {"score": math.nan})),
            ],
        )
    assert cache.get_many(["good", "planted", "other-shape", "not-json", "nan", "missing"]) == {"good": good}


def test_disk_cache_keeps_the_newest_entries_only(tmp_path) -> None:
    cache = DiskCache(tmp_path / "c.sqlite", max_entries=3)
    judgment = Judgment(index=0, score=0.5, relevant=True, reasoning="")
    for number in range(5):
        cache.put_many({f"k{number}": judgment})
    cache.put_many({"k2": judgment})  # written again: newest
    assert sorted(cache.get_many([f"k{n}" for n in range(5)])) == ["k2", "k3", "k4"]


def test_a_locked_disk_cache_costs_only_a_miss(builder, tmp_path, caplog) -> None:
    path = tmp_path / "locked.sqlite"
    cache = GuardedCache(DiskCache(path, busy_timeout=0.2))
    # Another process holds the database's write lock for the whole call.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sqlite3, sys, time
                db = sqlite3.connect({str(path)!r}, isolation_level=None)
                db.execute("BEGIN EXCLUSIVE")
                print("locked", flush=True)
                time.sleep(30)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        plan = _plan(builder, [("q", ["a", "b"])], cache)
        judgments = _judge(plan, lambda ids: _answer(True), cache=cache)[0]
    finally:
        holder.kill()
        holder.wait()
    assert [j.judged for j in judgments] == [True, True]
    assert any("could not" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


_WRITER = """
import sys
from rank1_integrations.cache import DiskCache
from rank1_integrations.core.judgment import Judgment

cache = DiskCache(sys.argv[1], busy_timeout=60)  # a loaded machine must not turn waiting into a failure here
name = sys.argv[2]
for round in range(40):
    judgment = Judgment(index=0, score=0.5, relevant=True, reasoning=name)
    cache.put_many({f"{name}-{round}-{i}": judgment for i in range(5)})
    found = cache.get_many([f"{name}-{round}-{i}" for i in range(5)])
    assert len(found) == 5, found
print("ok")
"""


def test_two_processes_share_a_disk_cache(tmp_path) -> None:
    path = tmp_path / "shared.sqlite"
    DiskCache(path)  # created once, in WAL mode
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name], stdout=subprocess.PIPE, text=True)
        for name in ("first", "second")
    ]
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    assert [w.returncode for w in writers] == [0, 0]
    assert [o.strip() for o in outputs] == ["ok", "ok"]
    keys = [f"{name}-{r}-{i}" for name in ("first", "second") for r in range(40) for i in range(5)]
    assert len(DiskCache(path).get_many(keys)) == 400
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_memory_cache_rejects_a_bad_bound() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_entries"):
            MemoryCache(bad)  # type: ignore[arg-type]
