"""The remote backend under faults, bad answers and bad input: nothing lost, the right party blamed.

A real vLLM server on loopback behind the fault proxy for faults on the wire; answers
no real vLLM gives (HTML with status 200, NaN label values, shuffled and missing
choices) are made by the proxy rewriting the server's real answers. Every judged
passage is checked against the embedded engine's judgment of that very passage (32
distinct passages, so a swap between positions cannot pass).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import math
import os
import random
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from rank1_integrations import (
    BackendError,
    InvalidInputError,
    Judgment,
    MissingDependencyError,
    PassagesFailedError,
    Rank1Reranker,
    ServerConnectionError,
    ServerStatusError,
    ServerTimeoutError,
)
from rank1_integrations.backends.remote.backend import RemoteBackend
from rank1_integrations.backends.remote.tokenizer import _LRU, RemoteTokenizer
from tests.conftest import SCRIPTED_BUDGET
from tests.fault_proxy import Fault, FaultProxy
from tests.models.tiny_models import JOIN_PASSAGE, LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.vllm_server import VLLMServer, shared_server, stop_all

pytestmark = pytest.mark.engine

TOLERANCE = 1e-4
FAST = {"initial_backoff": 0.02, "max_backoff": 0.2, "cache": False, "tokenizer": "server"}
BASES = (LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE, JOIN_PASSAGE)
PASSAGES = [f"{BASES[i % 4]} Note {i}." for i in range(32)]
SECRET = "sk-hardening-5e4d3c2b1a"
MODES = ["sync", "async"]


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.fixture(scope="module")
def reference(scripted_reranker: Rank1Reranker) -> list[Judgment]:
    """The embedded engine's judgment of each of the 32 passages."""
    return Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False).judge(
        LEN_QUERY, PASSAGES
    )


@pytest.fixture
def proxy(server: VLLMServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.root_url) as running:
        yield running


def remote_on(urls: str | list[str], model: str, **kwargs) -> Rank1Reranker:
    return Rank1Reranker.from_server(urls, model, max_reasoning_tokens=SCRIPTED_BUDGET, **{**FAST, **kwargs})


def judge(reranker: Rank1Reranker, mode: str, passages: list[str] = PASSAGES) -> list[Judgment]:
    return reranker.judge(LEN_QUERY, passages) if mode == "sync" else asyncio.run(reranker.ajudge(LEN_QUERY, passages))


def assert_own(judgment: Judgment | None, index: int, reference: list[Judgment]) -> None:
    """Judged, at its own index, exactly as the embedded engine judged that passage."""
    assert judgment is not None
    assert judgment.error is None, judgment.error
    assert judgment.index == index
    want = reference[index]
    assert judgment.score is not None
    assert want.score is not None
    assert abs(judgment.score - want.score) < TOLERANCE, (index, judgment, want)
    assert (judgment.reasoning, judgment.forced, judgment.relevant) == (want.reasoning, want.forced, want.relevant)


def prompt_of(reranker: Rank1Reranker, index: int) -> list[int]:
    return list(reranker.build_prompt(LEN_QUERY, PASSAGES[index]).token_ids)


def for_prompt(reranker: Rank1Reranker, index: int):
    """A fault filter: completion requests for passage ``index``'s reasoning prompt."""
    wanted = prompt_of(reranker, index)
    return lambda body: isinstance(body, dict) and body.get("prompt") == [wanted]


def failed_indices(error: PassagesFailedError) -> list[int]:
    return [failure.index for failure in error.failures]


def test_every_passage_matches_its_own_reference_without_faults(proxy, server, reference) -> None:
    got = judge(remote_on(proxy.base_url, server.model), "sync")
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference)
    assert len({j.score for j in reference}) > 4  # distinct enough that a swap would show


# -- 1. our own failures are ours ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_bug_on_our_side_surfaces_at_once_and_is_never_blamed_on_the_server(proxy, server, mode) -> None:
    reranker = remote_on(proxy.base_url, server.model)
    backend = reranker.backend
    assert isinstance(backend, RemoteBackend)

    def broken_client(display: str):
        raise TypeError("a bug in building the HTTP client")

    backend._client = broken_client  # type: ignore[method-assign]
    backend._clients.clear()
    started = time.monotonic()
    with pytest.raises(TypeError, match="a bug"):
        judge(reranker, mode, PASSAGES[:3])
    assert time.monotonic() - started < 2.0  # no retries, no backoff
    health = backend.router.health()[0]
    assert (health.failures, health.consecutive_failures, health.down_until, health.in_flight) == (0, 0, 0.0, 0)
    assert proxy.outcomes() == []


@pytest.mark.parametrize("mode", MODES)
def test_judging_after_close_fails_at_once_without_touching_the_server(proxy, server, mode) -> None:
    reranker = remote_on(proxy.base_url, server.model)
    reranker.close()
    with pytest.raises(BackendError, match="closed"):
        judge(reranker, mode, PASSAGES[:2])
    # The backend on its own says the same, whoever calls it.
    backend = reranker.backend
    with pytest.raises(BackendError, match="closed"):
        Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False).judge(LEN_QUERY, PASSAGES[30:])
    assert proxy.outcomes() == []
    assert backend.router.health()[0].failures == 0


async def _streamed(reranker: Rank1Reranker, passages: list[str]) -> list[Judgment]:
    return [judgment async for judgment in reranker.ajudge_stream(LEN_QUERY, passages)]


CALLS = {
    "judge": lambda reranker, passages: reranker.judge(LEN_QUERY, passages),
    "ajudge": lambda reranker, passages: asyncio.run(reranker.ajudge(LEN_QUERY, passages)),
    "judge_iter": lambda reranker, passages: list(reranker.judge_iter(LEN_QUERY, passages)),
    "ajudge_stream": lambda reranker, passages: asyncio.run(_streamed(reranker, passages)),
}


@pytest.mark.parametrize("held", ["/v1/completions", "/tokenize"])
@pytest.mark.parametrize("call", list(CALLS))
def test_a_call_running_when_the_reranker_closes_ends_at_once_with_the_packages_error(
    proxy, server, call, held
) -> None:
    reranker = remote_on(proxy.base_url, server.model)
    # The server holds every completion, or every /tokenize that builds a prompt (more passages than
    # prompt builders, so that some builds are still queued), until the close.
    passages = [f"{passage} Closing {n}." for n, passage in enumerate(PASSAGES[:12])]
    proxy.add(Fault("delay", delay=120.0, times=-1, path=held))
    ended: list[BaseException | None] = []

    def caller() -> None:
        try:
            CALLS[call](reranker, passages)
        except BaseException as err:
            ended.append(err)
        else:
            ended.append(None)

    thread = threading.Thread(target=caller, daemon=True)  # a hung call must not keep pytest alive
    thread.start()
    holding = len(passages) if held == "/v1/completions" else RemoteTokenizer.parallelism
    deadline = time.monotonic() + 60
    while proxy.delayed < holding and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.delayed == holding
    reranker.close()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the call still waits after close()"
    (error,) = ended
    assert isinstance(error, PassagesFailedError)
    assert sorted(failed_indices(error)) == list(range(len(passages)))
    assert all(isinstance(f.error, BackendError) and "closed" in str(f.error) for f in error.failures)


def test_a_missing_openai_package_is_a_typed_error_naming_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingDependencyError, match="'openai'") as caught:
        RemoteBackend("http://127.0.0.1:1/v1", "m")
    assert "pip install" in str(caught.value)


# -- 2. a malformed answer is the request's fault, bad input the caller's ----------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_html_answer_is_retried_and_never_disables_the_server(proxy, server, reference, mode) -> None:
    reranker = remote_on(proxy.base_url, server.model)
    proxy.add(Fault("html", times=2))
    got = judge(reranker, mode)
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference)
    assert proxy.outcomes().count("html") == 2
    health = reranker.backend.router.health()[0]
    assert health.disabled_reason is None
    assert health.failures == 2


def test_a_passage_that_is_not_valid_text_is_refused_before_any_request(server) -> None:
    with FaultProxy(server.root_url) as first, FaultProxy(server.root_url) as second:
        reranker = remote_on([first.base_url, second.base_url], server.model)
        sent = len(first.log) + len(second.log)
        for mode in MODES:
            with pytest.raises(InvalidInputError, match=r"indices \[1\]"):
                judge(reranker, mode, ["fine", "x \ud800", "fine too"])
        assert len(first.log) + len(second.log) == sent
        assert [h.disabled_reason for h in reranker.backend.router.health()] == [None, None]
        assert [h.failures for h in reranker.backend.router.health()] == [0, 0]
        assert reranker.judge(LEN_QUERY, [LEN_PASSAGE])[0].judged


def test_an_oversized_answer_is_refused_unread_and_retried(proxy, server, reference) -> None:
    reranker = remote_on(proxy.base_url, server.model, max_response_bytes=200_000)
    proxy.add(Fault("bloat", size=1_000_000, times=1))
    got = reranker.judge(LEN_QUERY, PASSAGES[:4])
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference)
    assert proxy.outcomes().count("bloat") == 1
    # Always oversized: the passage fails with the typed error, the others are judged.
    proxy.add(Fault("bloat", size=1_000_000, times=-1, match=for_prompt(reranker, 2)))
    got = Rank1Reranker(
        reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False, on_failure="mark_unjudged"
    ).judge(LEN_QUERY, PASSAGES[:4])
    assert [j.judged for j in got] == [True, True, False, True]
    assert "MalformedResponseError" in (got[2].error or "")
    assert "max_response_bytes" in (got[2].error or "")


# -- 3. label log-probabilities are checked --------------------------------------------------


def test_nan_label_values_fail_their_passage_only_and_are_never_cached(proxy, server, reference) -> None:
    reranker = remote_on(proxy.base_url, server.model, cache=True, on_failure="mark_unjudged")
    poisoned = 5 if not reference[5].forced else 6

    def nan_labels(body):
        for choice in body["choices"]:
            last = choice["logprobs"]["top_logprobs"][-1]
            for key in last:
                last[key] = math.nan
        return body

    proxy.add(Fault("mutate", times=-1, mutate=nan_labels, match=for_prompt(reranker, poisoned)))
    got = reranker.judge(LEN_QUERY, PASSAGES)
    assert not got[poisoned].judged
    assert "invalid label log-probabilities" in (got[poisoned].error or "")
    for index, judgment in enumerate(got):
        if index != poisoned:
            assert_own(judgment, index, reference)
    # Nothing broken was cached: asked again (the server healthy now), only that passage is sent.
    proxy.clear()
    again = reranker.judge(LEN_QUERY, PASSAGES)
    assert_own(again[poisoned], poisoned, reference)
    assert len(proxy.outcomes()) == 1


# -- 4./5. nothing judged is lost ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_failed_passage_among_32_keeps_the_other_31(proxy, server, reference, mode) -> None:
    reranker = remote_on(proxy.base_url, server.model, cache=True, max_retries=0)
    proxy.add(Fault("status", status=503, times=-1, match=for_prompt(reranker, 9)))
    with pytest.raises(PassagesFailedError) as caught:
        judge(reranker, mode)
    assert failed_indices(caught.value) == [9]
    assert caught.value.judgments[9] is None
    for index, judgment in enumerate(caught.value.judgments):
        if index != 9:
            assert_own(judgment, index, reference)
    # The caller's retry recomputes only what failed: the rest comes from the cache.
    proxy.clear()
    again = judge(reranker, mode)
    for index, judgment in enumerate(again):
        assert_own(judgment, index, reference)
    assert len(proxy.outcomes()) == (2 if reference[9].forced else 1)


def test_a_tokenizer_failure_marks_only_its_passages_unjudged(proxy, server, reference) -> None:
    reranker = remote_on(proxy.base_url, server.model, max_retries=1, on_failure="mark_unjudged")
    unlucky = {3, 17}

    def is_unlucky(body) -> bool:
        return isinstance(body, dict) and any(PASSAGES[i] in str(body.get("prompt")) for i in unlucky)

    proxy.add(Fault("status", path="/tokenize", status=500, times=-1, match=is_unlucky))
    got = reranker.judge(LEN_QUERY, PASSAGES)
    assert sorted(i for i, j in enumerate(got) if not j.judged) == sorted(unlucky)
    assert all("ServerStatusError" in (got[i].error or "") for i in unlucky)
    for index, judgment in enumerate(got):
        if index not in unlucky:
            assert_own(judgment, index, reference)
    # Under the default policy the same failure raises, with every other judgment on the error.
    strict = Rank1Reranker(reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False)
    with pytest.raises(PassagesFailedError) as caught:
        strict.judge(LEN_QUERY, PASSAGES)
    assert sorted(failed_indices(caught.value)) == sorted(unlucky)
    assert sum(j is not None for j in caught.value.judgments) == 32 - len(unlucky)


@pytest.mark.parametrize("mode", MODES)
def test_shuffled_choices_and_a_dropped_one_never_mismatch(proxy, server, reference, mode) -> None:
    # The local tokenizer copy builds every prompt ahead: one submission, so requests of exactly 3.
    reranker = remote_on(
        proxy.base_url, server.model, prompts_per_request=3, on_failure="mark_unjudged", tokenizer=None
    )
    dropped: list[list[int]] = []
    reasoning_prompts = [prompt_of(reranker, index) for index in range(32)]

    def shuffle_and_drop(body):
        choices = sorted(body["choices"], key=lambda c: c["index"])
        if len(choices) == 3 and choices[1]["prompt_token_ids"] in reasoning_prompts:
            dropped.append(choices[1]["prompt_token_ids"])  # the middle prompt's choice goes missing
            choices = [choices[2], choices[0]]
        body["choices"] = list(reversed(choices))
        return body

    proxy.add(Fault("mutate", times=-1, mutate=shuffle_and_drop))
    got = judge(reranker, mode)
    lost = {index for index in range(32) if reasoning_prompts[index] in dropped}
    assert len(lost) == 10  # 32 prompts in 10 requests of 3 (and one of 2, left alone)
    assert {i for i, j in enumerate(got) if not j.judged} == lost
    assert all("no choice for prompt" in (got[i].error or "") for i in lost)
    for index, judgment in enumerate(got):
        if index not in lost:
            assert_own(judgment, index, reference)


# -- 6. retries spread out, outages end, dead fleets fail fast ---------------------------------


def test_a_two_second_outage_costs_little_more_than_itself(proxy, server, reference) -> None:
    # The default retry policy, 16 passages on one server that answers 503 for 2 s.
    passages = PASSAGES[:16]
    healthy = Rank1Reranker.from_server(proxy.base_url, server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False)
    started = time.monotonic()
    healthy.judge(LEN_QUERY, passages)
    normal = time.monotonic() - started
    proxy.add(Fault("status", status=503, times=-1))
    ends = threading.Timer(2.0, proxy.clear)
    started = time.monotonic()
    ends.start()
    got = healthy.judge(LEN_QUERY, passages)
    elapsed = time.monotonic() - started
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference)
    assert elapsed < 2.0 + normal + 5.0, (elapsed, normal)
    health = healthy.backend.router.health()[0]
    assert health.down_until == 0.0  # answering again ended the cool-down


def test_a_flaky_server_that_answers_in_between_loses_no_passage(proxy, server, reference) -> None:
    # The default policy with max_retries=16; request after request the server answers, fails with a 500,
    # answers, says 429 with Retry-After 2 s, answers, drops the connection, answers, holds the request
    # past the timeout. No passage may be lost to the waits it asked for, nor to a held request. (Whether
    # a retry meets a fault depends on the others' requests in between: about a coin flip each time, so
    # the retries allowed are far more than a few unlucky flips in a row.)
    passages = PASSAGES * 2
    flaky = Rank1Reranker.from_server(
        proxy.base_url,
        server.model,
        max_reasoning_tokens=SCRIPTED_BUDGET,
        cache=False,
        timeout=2.5,
        max_retries=16,
        max_concurrency=8,
    )
    flaky.judge(LEN_QUERY, passages[:8])  # connections open
    started = time.monotonic()
    flaky.judge(LEN_QUERY, passages)
    normal = time.monotonic() - started
    steps = (None, Fault("status", status=500), None, Fault("status", status=429, retry_after="2"), None)
    proxy.add(Fault("cycle", times=-1, steps=(*steps, Fault("drop"), None, Fault("delay", delay=60.0))))
    started = time.monotonic()
    got = flaky.judge(LEN_QUERY, passages)
    elapsed = time.monotonic() - started
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference * 2)
    outcomes = proxy.outcomes()
    assert {"status 500", "status 429", "dropped", "client disconnected"} <= set(outcomes)
    assert outcomes.count("status 429") >= len(passages) // 8  # every completion met the cycle
    # Each Retry-After and each held request is waited out (here they cost far more than the tiny
    # model's fault-free run), but no call goes on waiting beyond what its server asked.
    assert elapsed < 2 * normal + 40, (elapsed, normal)


def test_a_dead_fleet_fails_within_ten_seconds_with_the_packages_error(server) -> None:
    # Default settings; both servers gone before the call (its prompts need their tokenizer too).
    with FaultProxy(server.root_url) as first, FaultProxy(server.root_url) as second:
        reranker = Rank1Reranker.from_server(
            [first.base_url, second.base_url], server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False
        )
        first.kill()
        second.kill()
        fresh = [f"{passage} Unseen {n}." for n, passage in enumerate(PASSAGES[:16])]
        started = time.monotonic()
        with pytest.raises(PassagesFailedError) as caught:
            reranker.judge(LEN_QUERY, fresh)
        elapsed = time.monotonic() - started
    assert elapsed < 10.0
    assert sorted(failed_indices(caught.value)) == list(range(16))
    assert all(isinstance(f.error, ServerConnectionError) for f in caught.value.failures)


@pytest.mark.parametrize("mode", MODES)
def test_both_servers_killed_mid_batch_fail_typed_within_the_budget(server, reference, mode) -> None:
    budget = 2.0
    with FaultProxy(server.root_url) as first, FaultProxy(server.root_url) as second:
        reranker = remote_on([first.base_url, second.base_url], server.model, max_concurrency=4, retry_budget=budget)
        for proxy in (first, second):
            proxy.add(Fault("delay", delay=0.3, times=-1))
        killed: list[float] = []

        def kill_both_when_busy() -> None:
            deadline = time.monotonic() + 30
            while len(first.outcomes()) + len(second.outcomes()) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            first.kill()
            second.kill()
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_both_when_busy)
        killer.start()
        with pytest.raises(PassagesFailedError) as caught:
            judge(reranker, mode)
        ended = time.monotonic()
        killer.join()
    # Each request keeps retrying for at most the budget after the kill (then one attempt
    # each, refused at once), plus the 0.3 s a request was held when the kill came.
    assert ended - killed[0] < budget + 2.0
    failed = set(failed_indices(caught.value))
    assert failed
    assert all(isinstance(f.error, ServerConnectionError) for f in caught.value.failures)
    for index, judgment in enumerate(caught.value.judgments):  # every passage accounted for
        if index in failed:
            assert judgment is None
        else:
            assert_own(judgment, index, reference)


# -- 7. no secret anywhere ---------------------------------------------------------------------


def _everything_shown(error: BaseException) -> str:
    chain, seen = [], set()
    stack = [error]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        chain.append(err)
        stack += [err.__cause__, err.__context__]
        stack += [f.error for f in getattr(err, "failures", ())]
    return "".join(traceback.format_exception(error)) + "".join(f"{e!s}{e!r}{vars(e)!r}" for e in chain)


def test_a_401_echoing_the_key_leaks_it_nowhere(server, caplog, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("RANK1_API_KEY", raising=False)
    with FaultProxy(server.root_url, api_key=SECRET) as guarded:
        reranker = remote_on(guarded.base_url, server.model, api_key=SECRET)
        guarded.add(Fault("echo_auth", times=-1))
        with pytest.raises(PassagesFailedError) as caught:
            reranker.judge(LEN_QUERY, PASSAGES[:2])
        assert guarded.outcomes().count("401 echoing the key") == 2  # a 401 is not retried
        with pytest.raises(ServerStatusError) as refused:
            remote_on(guarded.base_url, server.model, api_key=SECRET + "-wrong")
    shown = _everything_shown(caught.value) + _everything_shown(refused.value)
    shown += caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "HTTP 401" in shown
    assert SECRET not in shown


def test_credentials_in_a_url_are_sent_as_basic_auth_and_shown_nowhere(server, caplog, monkeypatch) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("RANK1_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    password = "pw-in-url-77"
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    with FaultProxy(server.root_url, basic_auth=("alice", password)) as guarded:
        url = guarded.base_url.replace("http://", f"http://alice:{password}@")
        reranker = remote_on(url, server.model, max_retries=0)
        assert reranker.judge(LEN_QUERY, [LEN_PASSAGE])[0].judged
        assert set(guarded.authorizations) == {f"Basic {token}"}
        guarded.add(Fault("echo_auth", times=-1))
        with pytest.raises(PassagesFailedError) as caught:
            reranker.judge(LEN_QUERY, [SORTED_PASSAGE])
        backend = reranker.backend
        shown = [repr(reranker), repr(backend), repr(backend._core), str(vars(backend._core)), repr(backend.router)]
        shown += [str(h) for h in backend.router.health()]
        with pytest.raises(InvalidInputError, match="not both"):
            remote_on(url, server.model, api_key="also-a-key")
    shown.append(_everything_shown(caught.value))
    shown += [caplog.text, *(r.getMessage() for r in caplog.records)]
    assert not [text for text in shown if password in text or token in text]


# -- 8./10./12. bounded time and resources ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_trickled_answer_is_cut_at_the_timeout(proxy, server, mode) -> None:
    reranker = remote_on(proxy.base_url, server.model, timeout=1.0, max_retries=0)
    proxy.add(Fault("trickle", delay=0.5, times=-1))
    started = time.monotonic()
    with pytest.raises(PassagesFailedError) as caught:
        judge(reranker, mode, [LEN_PASSAGE])
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.failures[0].error, ServerTimeoutError)


def test_a_cancelled_ajudge_hangs_up_and_leaves_the_backend_healthy(proxy, server, reference) -> None:
    reranker = remote_on(proxy.base_url, server.model)
    proxy.add(Fault("delay", delay=20.0, times=-1))

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(reranker.ajudge(LEN_QUERY, PASSAGES[:4]))
        while proxy.delayed < 4:  # every completion sent (prompts are built while others are in flight)
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    deadline = time.monotonic() + 5
    while (proxy.outcomes().count("client disconnected") < 4 or reranker.backend.router.health()[0].in_flight) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert proxy.outcomes().count("client disconnected") == 4  # the server saw each request go
    health = reranker.backend.router.health()[0]
    assert (health.in_flight, health.failures) == (0, 0)  # a cancel is nobody's failure
    proxy.clear()
    got = asyncio.run(reranker.ajudge(LEN_QUERY, PASSAGES[:4]))
    for index, judgment in enumerate(got):
        assert_own(judgment, index, reference)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_event_loops_leak_nothing_and_close_releases_everything(proxy, server) -> None:
    before_threads = {t.ident for t in threading.enumerate()}
    baseline = _open_descriptors()
    reranker = remote_on(proxy.base_url, server.model)
    counts = []
    for run in range(100):
        assert asyncio.run(reranker.ajudge(LEN_QUERY, [PASSAGES[run % 4]]))[0].judged
        counts.append(_open_descriptors())
    assert max(counts) - baseline < 20, counts[::10]  # bounded, not growing with the runs
    assert counts[-1] <= counts[9] + 2
    reranker.close()
    assert _open_descriptors() <= baseline + 2
    time.sleep(0.2)
    leftover = [t for t in threading.enumerate() if t.ident not in before_threads and t.name == "rank1-remote-io"]
    assert not leftover


def test_sync_callers_share_one_bounded_set_of_requests(proxy, server) -> None:
    reranker = remote_on(proxy.base_url, server.model, max_concurrency=8)
    proxy.add(Fault("delay", delay=0.3, times=-1))
    barrier = threading.Barrier(12)
    peak_threads = [0]
    results: list[list[Judgment]] = []

    def caller(n: int) -> None:
        barrier.wait()
        results.append(reranker.judge(LEN_QUERY, [PASSAGES[(n + k) % 32] for k in range(3)]))

    callers = [threading.Thread(target=caller, args=(n,)) for n in range(12)]
    baseline = threading.active_count()
    for thread in callers:
        thread.start()
    while any(t.is_alive() for t in callers):
        peak_threads[0] = max(peak_threads[0], threading.active_count())
        time.sleep(0.01)
    assert len(results) == 12
    assert all(j.judged for batch in results for j in batch)
    assert proxy.peak_in_flight <= 8
    # The 12 callers, the backend's one I/O thread and the reranker's bounded pool of prompt builders.
    assert peak_threads[0] <= baseline + 12 + 1 + RemoteTokenizer.parallelism


def test_the_tokenizer_cache_is_bounded_by_size() -> None:
    cache: _LRU[tuple[str, bool], tuple[int, ...]] = _LRU(100, lambda key, ids: len(key[0]) + len(ids))
    cache.put(("x" * 30, False), (1, 2))
    cache.put(("y" * 30, False), (3,))
    cache.put(("z" * 30, False), (4,))  # 32 + 31 + 31 = 94: all fit
    assert cache.get(("x" * 30, False)) == (1, 2)
    cache.put(("w" * 30, False), (5,))  # over 100: the least recently used (y) goes
    assert cache.get(("y" * 30, False)) is None
    assert cache.get(("x" * 30, False)) == (1, 2)
    cache.put(("huge" * 100, False), (6,))  # larger than the whole cache: never kept
    assert cache.get(("huge" * 100, False)) is None
    assert cache.get(("z" * 30, False)) == (4,)


def _deep_size(obj: object, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    items = obj if isinstance(obj, tuple) else ()
    return sys.getsizeof(obj) + sum(_deep_size(item, seen) for item in items)


def test_the_server_tokenizers_cache_holds_at_most_its_bytes(server) -> None:
    # 16 distinct passages of 100 KB: their texts and ids (an int object each) would hold about 46 MiB.
    reranker = remote_on(server.base_url, server.model)
    tokenizer = reranker.backend.tokenizer
    assert isinstance(tokenizer, RemoteTokenizer)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]
    limit = 32 * 1024 * 1024  # the default tokenizer_cache_bytes
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(16):
            rng = random.Random(n)
            passage = " ".join(rng.choice(words) for _ in range(20_000))[:100_000]
            assert reranker.build_prompt(LEN_QUERY, passage).truncated
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    caches = (tokenizer._encoded, tokenizer._decoded)
    seen: set[int] = set()
    held = sum(_deep_size(key, seen) + _deep_size(value, seen) for c in caches for key, value in c._items.items())
    accounted = sum(c._size for c in caches)
    assert held <= accounted <= limit, (held, accounted)  # its own accounting never under-counts
    assert retained < limit + 4 * 1024 * 1024, retained
    assert reranker.backend.settings.tokenizer_cache_bytes == limit


def test_model_output_errors_are_not_retried(proxy, server) -> None:
    reranker = remote_on(proxy.base_url, server.model, on_failure="mark_unjudged")

    def no_logprobs(body):
        for choice in body["choices"]:
            choice.pop("logprobs")
        return body

    proxy.add(Fault("mutate", times=-1, mutate=no_logprobs, match=for_prompt(reranker, 0)))
    got = reranker.judge(LEN_QUERY, PASSAGES[:2])
    assert [j.judged for j in got] == [False, True]
    assert "ModelOutputError" in (got[0].error or "")
    assert proxy.outcomes().count("mutate") == 1
