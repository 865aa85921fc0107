"""Faults between the remote backend and a real vLLM server, injected by a loopback proxy.

500s, 429 with Retry-After, dropped connections (before and after the server did the
work), answers slower than the timeout, a server killed mid-batch. Every passage must
come back judged and matched to its own passage (its score equals the embedded
engine's for that passage), or the call raises a typed error naming the passages
that failed; with ``on_failure="mark_unjudged"`` those come back unjudged instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rank1_integrations import (
    Judgment,
    PassagesFailedError,
    Rank1Reranker,
    ServerConnectionError,
    ServerStatusError,
    ServerTimeoutError,
)
from tests.conftest import IN_PROCESS_ENGINE, SCRIPTED_BUDGET
from tests.fault_proxy import Fault, FaultProxy
from tests.models.tiny_models import (
    JOIN_PASSAGE,
    JOIN_QUERY,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
)
from tests.vllm_server import VLLMServer, shared_server, stop_all

pytestmark = pytest.mark.engine

TOLERANCE = 1e-4
FAST = {"initial_backoff": 0.02, "max_backoff": 0.2, "cache": False, "tokenizer": "server"}
"""Short backoff (the policy is the same); no judgment cache, so every call goes to the server."""
BATCHES = [(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE]), (JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE])]
MODES = ["sync", "async"]


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest) -> dict[tuple[str, str], Judgment]:
    """The embedded engine's judgment of every scripted (query, passage) pair; where this process
    has no vLLM (the floor job), the same server's, asked one pair at a time without faults."""
    source = "scripted_reranker" if IN_PROCESS_ENGINE else "scripted_server_reranker"
    judge: Rank1Reranker = request.getfixturevalue(source)
    pairs = [(q, p) for q in (LEN_QUERY, JOIN_QUERY) for p in (LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE, JOIN_PASSAGE)]
    judged = judge.judge_many([(q, [p]) for q, p in pairs])
    return {pair: batch[0] for pair, batch in zip(pairs, judged, strict=True)}


@pytest.fixture
def proxy(server: VLLMServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.root_url) as running:
        yield running


def remote_on(urls: str | list[str], model: str, **kwargs) -> Rank1Reranker:
    return Rank1Reranker.from_server(urls, model, max_reasoning_tokens=SCRIPTED_BUDGET, **{**FAST, **kwargs})


def in_order_on(url: str, model: str, **kwargs) -> Rank1Reranker:
    """One request at a time, sent in the passages' order: prompts built ahead with the local tokenizer
    copy go in one submission (the server's tokenizer builds them on a pool, sent as each is ready)."""
    return remote_on(url, model, max_concurrency=1, tokenizer=None, **kwargs)


def run(reranker: Rank1Reranker, mode: str, batches=BATCHES) -> list[list[Judgment]]:
    return reranker.judge_many(batches) if mode == "sync" else asyncio.run(reranker.ajudge_many(batches))


def assert_matches(judgment: Judgment, index: int, want: Judgment) -> None:
    """Judged, at its own index, with the embedded engine's judgment of its own passage."""
    assert judgment.error is None, judgment.error
    assert judgment.index == index
    assert judgment.score is not None
    assert abs(judgment.score - want.score) < TOLERANCE, (index, judgment, want)
    assert (judgment.reasoning, judgment.forced, judgment.relevant) == (want.reasoning, want.forced, want.relevant)


def assert_each_matches_its_passage(got, batches, reference) -> None:
    """Every passage judged, in order, each matched to its own passage."""
    assert [len(b) for b in got] == [len(passages) for _, passages in batches]
    for judgments, (query, passages) in zip(got, batches, strict=True):
        for index, (judgment, passage) in enumerate(zip(judgments, passages, strict=True)):
            assert_matches(judgment, index, reference[(query, passage)])


TRANSIENT = {
    # Built fresh for each test: a Fault counts down as it is met.
    "500s": (lambda: [Fault("status", status=500, times=2)], {}),
    "503": (lambda: [Fault("status", status=503, times=1)], {}),
    "429-retry-after": (lambda: [Fault("status", status=429, retry_after="1", times=1)], {}),
    "dropped-connection": (lambda: [Fault("drop", times=2)], {}),
    "dropped-after-the-work": (lambda: [Fault("drop_after", times=2)], {}),
    "slower-than-timeout": (lambda: [Fault("delay", delay=4.0, times=1)], {"timeout": 1.5}),
    "tokenizer-500": (lambda: [Fault("status", path="/tokenize", times=2)], {}),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_faults_are_retried_and_every_passage_is_judged(proxy, server, reference, case, mode) -> None:
    make_faults, settings = TRANSIENT[case]
    faults = make_faults()
    proxy.add(*faults)
    started = time.monotonic()
    reranker = remote_on(proxy.base_url, server.model, **settings)
    got = run(reranker, mode)
    elapsed = time.monotonic() - started
    assert_each_matches_its_passage(got, BATCHES, reference)
    injected = sum(f.times == 0 for f in faults)
    assert injected == len(faults)  # every fault was met and survived
    if case == "429-retry-after":
        assert elapsed >= 0.9  # one server: its Retry-After is honoured
    if faults[0].path == "/v1/completions":
        outcomes = proxy.outcomes()
        assert len([o for o in outcomes if o == "ok" or o == "delay"]) >= 6  # 5 reasoning + 1 forced answer


@pytest.mark.parametrize("mode", MODES)
def test_client_errors_are_not_retried(proxy, server, reference, mode) -> None:
    proxy.add(Fault("status", status=400, times=1))
    reranker = in_order_on(proxy.base_url, server.model)
    with pytest.raises(PassagesFailedError) as caught:
        run(reranker, mode)
    assert [(f.batch, f.index) for f in caught.value.failures] == [(0, 0)]
    error = caught.value.failures[0].error
    assert isinstance(error, ServerStatusError)
    assert error.status == 400
    assert proxy.outcomes().count("status 400") == 1
    # Same fault with the lenient policy: that passage unjudged, the others judged.
    proxy.clear()
    proxy.add(Fault("status", status=400, times=1))
    lenient = Rank1Reranker(
        reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, on_failure="mark_unjudged", cache=False
    )
    got = run(lenient, mode)
    assert not got[0][0].judged
    assert "400" in (got[0][0].error or "")
    for index in (1, 2):
        assert_matches(got[0][index], index, reference[(LEN_QUERY, BATCHES[0][1][index])])
    assert_each_matches_its_passage(got[1:], BATCHES[1:], reference)


@pytest.mark.parametrize("mode", MODES)
def test_exhausted_retries_name_the_passages_that_failed(proxy, server, reference, mode) -> None:
    batch = [(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE])]
    reranker = in_order_on(proxy.base_url, server.model, max_retries=2)
    proxy.add(Fault("status", status=500, times=-1, skip=1))
    with pytest.raises(PassagesFailedError, match=r"2 of 3 passages could not be judged: indices 1, 2") as caught:
        run(reranker, mode, batch)
    assert all(isinstance(f.error, ServerStatusError) and f.error.status == 500 for f in caught.value.failures)
    assert proxy.outcomes().count("status 500") == 2 * 3  # two passages, three attempts each
    proxy.clear()
    proxy.add(Fault("status", status=500, times=-1, skip=1))
    lenient = Rank1Reranker(
        reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, on_failure="mark_unjudged", cache=False
    )
    (got,) = run(lenient, mode, batch)
    assert [j.judged for j in got] == [True, False, False]
    assert [j.index for j in got] == [0, 1, 2]
    assert all("ServerStatusError" in (j.error or "") for j in got[1:])
    assert_matches(got[0], 0, reference[(LEN_QUERY, LEN_PASSAGE)])


@pytest.mark.parametrize("mode", MODES)
def test_timeouts_are_typed_when_retries_run_out(proxy, server, mode) -> None:
    proxy.add(Fault("delay", delay=5.0, times=-1))
    reranker = remote_on(proxy.base_url, server.model, timeout=1.0, max_retries=1)
    started = time.monotonic()
    with pytest.raises(PassagesFailedError) as caught:
        run(reranker, mode, [(LEN_QUERY, [LEN_PASSAGE])])
    assert isinstance(caught.value.failures[0].error, ServerTimeoutError)
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("mode", MODES)
def test_a_server_killed_mid_batch_is_routed_around(server, reference, mode) -> None:
    batches = [
        (LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE] * 2),
        (JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE] * 2),
    ]
    with FaultProxy(server.root_url) as doomed, FaultProxy(server.root_url) as healthy:
        reranker = remote_on([doomed.base_url, healthy.base_url], server.model, max_concurrency=4)
        # Dies at its third request, while others are in flight (each is held 0.3 s).
        doomed.add(Fault("kill", skip=2), Fault("delay", delay=0.3, times=-1))
        got = run(reranker, mode, batches)
        assert "killed" in doomed.outcomes()
        assert len(healthy.outcomes()) > len(doomed.outcomes())
        health = {h.url: h for h in reranker.backend.router.health()}
        assert health[doomed.base_url].failures >= 1
    assert_each_matches_its_passage(got, batches, reference)


def assert_judged_or_lost_to_the_kill(judgments, batch, reference) -> None:
    """Requests go one at a time in the passages' order: passage 0 (one request) is judged, the
    kill at the second request takes passages 1 and 2."""
    ((query, passages),) = batch
    judged = [j for j in judgments if j is not None and j.judged]
    assert [j.index for j in judged] == [0]
    assert_matches(judged[0], 0, reference[(query, passages[0])])


@pytest.mark.parametrize("mode", MODES)
def test_the_only_server_killed_mid_batch(proxy, server, reference, mode) -> None:
    batch = [(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE])]
    reranker = in_order_on(proxy.base_url, server.model, max_retries=1)
    proxy.add(Fault("kill", skip=1))
    with pytest.raises(PassagesFailedError) as caught:
        run(reranker, mode, batch)
    assert all(isinstance(f.error, ServerConnectionError) for f in caught.value.failures)
    assert_judged_or_lost_to_the_kill(caught.value.batches[0], batch, reference)
    # It comes back: the router tries it again and everything is judged.
    proxy.revive()
    proxy.clear()
    time.sleep(0.5)  # past the (short) cool-down
    assert_each_matches_its_passage(run(reranker, mode, batch), batch, reference)
    # Killed again, with the lenient policy: the lost passages come back unjudged.
    proxy.add(Fault("kill", skip=1))
    lenient = Rank1Reranker(
        reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, on_failure="mark_unjudged", cache=False
    )
    (got,) = run(lenient, mode, batch)
    assert_judged_or_lost_to_the_kill(got, batch, reference)
    assert all("ServerConnectionError" in (j.error or "") for j in got if not j.judged)


@pytest.mark.parametrize("mode", MODES)
def test_mixed_faults_never_drop_duplicate_or_mismatch(proxy, server, reference, mode) -> None:
    passages = [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE, JOIN_PASSAGE] * 3
    random.Random(7).shuffle(passages)
    batches = [(LEN_QUERY, passages), (JOIN_QUERY, list(reversed(passages)))]
    reranker = remote_on(
        proxy.base_url, server.model, max_concurrency=3, prompts_per_request=2, max_retries=6, timeout=2.0
    )
    proxy.add(
        Fault("status", status=500, times=2),
        Fault("drop", times=1, skip=1),
        Fault("status", status=429, retry_after="0.2", times=1, skip=2),
        Fault("drop_after", times=2, skip=3),
        Fault("delay", delay=3.0, times=1, skip=4),
        Fault("status", status=503, times=1, skip=6),
    )
    got = run(reranker, mode, batches)
    assert_each_matches_its_passage(got, batches, reference)
    outcomes = proxy.outcomes()
    assert {"status 500", "dropped", "status 429", "dropped after upstream", "status 503"} <= set(outcomes)
