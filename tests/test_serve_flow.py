"""What rank1-serve does with the work behind its requests, on real engines.

Repeats come from the result cache; identical passages in flight are judged once;
backend failures become 5xx JSON that names no internals; a client that disconnects
aborts its engine requests, but not work another client still waits for. The backend
is the session's engine behind a recorder (and, where a test needs requests to overlap
or fail, a gate or an injected error); the disconnect tests run the untrained model
with a long budget so a judgment takes seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rank1_integrations import (
    BackendError,
    Rank1Error,
    Rank1Reranker,
    ServerConnectionError,
    ServerTimeoutError,
)
from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult, ResultSink
from rank1_integrations.serve import create_app
from tests.adapter_support import KNOWN, TOLERANCE, RecordingBackend
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.serve_support import InProcessServer

pytestmark = pytest.mark.engine

SLOW_BUDGET = 600
"""The untrained model reasons to the budget: several seconds per judgment here."""


def post(server: InProcessServer, body: Any, path: str = "/v1/rerank") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def metric(server: InProcessServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def passages_in(prompts: Sequence[str]) -> list[str]:
    return [next(p for p in KNOWN if p in prompt) for prompt in prompts]


@pytest.fixture
def serve() -> Iterator[Callable[..., InProcessServer]]:
    started: list[InProcessServer] = []

    def start(reranker: Rank1Reranker, **settings: Any) -> InProcessServer:
        started.append(InProcessServer(create_app(reranker, **settings)))
        return started[-1]

    yield start
    for server in started:
        server.stop()


class GatedBackend(RecordingBackend):
    """The real engine; each call is recorded, then held until the test opens the gate (or, with
    ``passes`` = n, lets the first n calls through)."""

    def __init__(self, inner: Backend, *, fail: Sequence[str] = ()) -> None:
        super().__init__(inner, fail=fail)
        self.gate = threading.Event()
        self.passes = 0

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        prompts = self._record(requests)
        number = len(self.calls)
        held: Future[Any] = Future()  # stands for the engine's future until the gate opens
        sent: list[Future[Any]] = []

        def release() -> None:
            while not (self.gate.wait(0.01) or number <= self.passes):
                if held.cancelled():
                    return
            if held.cancelled():
                return
            sent.append(self.forward(requests, prompts, on_result))
            sent[0].add_done_callback(lambda done: _settle(held, done))

        held.add_done_callback(lambda _: held.cancelled() and sent and sent[0].cancel())
        threading.Thread(target=release, daemon=True).start()
        return held


def _settle(held: Future[Any], done: Future[Any]) -> None:
    if done.cancelled():
        held.cancel()
    elif done.exception() is not None:
        held.set_exception(done.exception())
    else:
        held.set_result(done.result())


class FailingBackend(RecordingBackend):
    """The real engine, answering ``error`` (while it is set) for every request instead of its completion."""

    def __init__(self, inner: Backend, error: Rank1Error) -> None:
        super().__init__(inner)
        self.error: Rank1Error | None = error

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        def answer(position: int, result: CompletionResult) -> None:
            on_result(position, result if self.error is None else self.error)

        return self.inner.submit(requests, answer)


def test_repeats_come_from_the_result_cache(scripted_reranker, truth, serve) -> None:
    backend = RecordingBackend(scripted_reranker.backend)
    server = serve(Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET))  # the default memory cache
    first = post(server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE, SORTED_PASSAGE]}).json()
    calls = len(backend.calls)
    again = post(server, {"query": LEN_QUERY, "documents": [SORTED_PASSAGE, LEN_PASSAGE]}).json()
    assert len(backend.calls) == calls  # nothing reached the engine
    assert [(r["index"], r["relevance_score"]) for r in again["results"]] == [
        (1 - r["index"], r["relevance_score"]) for r in first["results"]
    ]
    assert first["results"][0]["relevance_score"] == pytest.approx(truth["len"].score, abs=TOLERANCE)
    assert metric(server, "rank1_serve_cache_hits_total") == 2
    assert metric(server, "rank1_serve_passages_judged_total") == 2


def test_identical_passages_in_flight_are_judged_once(scripted_reranker, truth, serve) -> None:
    backend = GatedBackend(scripted_reranker.backend)
    server = serve(Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False))  # only sharing helps
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE, SORTED_PASSAGE]})
        wait_for(lambda: len(backend.calls) == 1)
        # a client retrying with more documents: two of them are being judged already
        body = {
            "model": backend.model_name,
            "query": LEN_QUERY,
            "documents": [SORTED_PASSAGE, OPEN_PASSAGE, LEN_PASSAGE],
        }
        second = pool.submit(post, server, body, "/v2/rerank")
        wait_for(lambda: len(backend.calls) == 2)
        backend.gate.set()
        one, two = first.result().json(), second.result().json()
    # reasoning: [LEN, SORTED] for the first, [OPEN] for the second; then OPEN's forced answer
    assert [passages_in(prompts) for _, prompts in backend.calls] == [
        [LEN_PASSAGE, SORTED_PASSAGE],
        [OPEN_PASSAGE],
        [OPEN_PASSAGE],
    ]
    scores = {LEN_PASSAGE: truth["len"].score, SORTED_PASSAGE: truth["sorted"].score, OPEN_PASSAGE: truth["open"].score}
    for body, docs in ((one, [LEN_PASSAGE, SORTED_PASSAGE]), (two, [SORTED_PASSAGE, OPEN_PASSAGE, LEN_PASSAGE])):
        assert {docs[r["index"]]: r["relevance_score"] for r in body["results"]} == pytest.approx(
            {d: scores[d] for d in docs}, abs=TOLERANCE
        )
    assert metric(server, "rank1_serve_shared_judgments_total") == 2
    assert metric(server, "rank1_serve_passages_judged_total") == 3


def test_a_request_that_joined_a_batch_returns_when_its_own_passages_are_judged(
    scripted_reranker, truth, serve
) -> None:
    backend = GatedBackend(scripted_reranker.backend)
    server = serve(Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False))  # only sharing helps
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, server, {"query": LEN_QUERY, "documents": [OPEN_PASSAGE, LEN_PASSAGE]})
        wait_for(lambda: len(backend.calls) == 1)
        joining = pool.submit(post, server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE]})
        wait_for(lambda: metric(server, "rank1_serve_judgment_waits") == 2)  # it joined the first batch
        backend.passes = 1  # the reasoning goes on; OPEN runs out of budget, and its forced answer is held
        wait_for(joining.done, timeout=120)
        wait_for(lambda: len(backend.calls) == 2)
        assert [passages_in(prompts) for _, prompts in backend.calls] == [[OPEN_PASSAGE, LEN_PASSAGE], [OPEN_PASSAGE]]
        assert not slow.done()
        assert metric(server, "rank1_serve_passages_in_flight") == 1  # OPEN
        backend.gate.set()
        answers = {"slow": slow.result().json()["results"], "joining": joining.result().json()["results"]}
    assert [(r["index"], r["relevance_score"]) for r in answers["joining"]] == [
        (0, pytest.approx(truth["len"].score, abs=TOLERANCE))
    ]
    assert [(r["index"], r["forced"]) for r in answers["slow"]] == [(1, False), (0, True)]
    assert metric(server, "rank1_serve_shared_judgments_total") == 1


def test_a_failed_passage_fails_only_the_requests_that_asked_for_it(scripted_reranker, truth, serve) -> None:
    backend = GatedBackend(scripted_reranker.backend, fail=[SORTED_PASSAGE])
    server = serve(Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False))
    with ThreadPoolExecutor(2) as pool:
        failing = pool.submit(post, server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE, SORTED_PASSAGE]})
        wait_for(lambda: len(backend.calls) == 1)
        joining = pool.submit(post, server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE]})  # joins LEN
        wait_for(lambda: metric(server, "rank1_serve_judgment_waits") == 2)
        backend.gate.set()
        assert failing.result().status_code == 502
        joined = joining.result()
    assert joined.status_code == 200
    assert joined.json()["results"][0]["relevance_score"] == pytest.approx(truth["len"].score, abs=TOLERANCE)
    assert len(backend.calls) == 1  # LEN was judged once, for both


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BackendError("engine failed near http://10.1.2.3:8000"), 502),
        (ServerConnectionError("cannot reach http://10.1.2.3:8000", server="http://10.1.2.3:8000"), 503),
        (ServerTimeoutError("no answer from http://10.1.2.3:8000", server="http://10.1.2.3:8000"), 504),
    ],
    ids=["backend", "unreachable", "timeout"],
)
@pytest.mark.parametrize("on_failure", ["raise", "mark_unjudged"])
def test_backend_failures_are_5xx_json_without_internals(scripted_reranker, serve, error, status, on_failure) -> None:
    backend = FailingBackend(scripted_reranker.backend, error)
    reranker = Rank1Reranker(backend, max_reasoning_tokens=SCRIPTED_BUDGET, on_failure=on_failure, cache=False)
    server = serve(reranker)
    # with "mark_unjudged" only the failures' messages reach the server: any failure is a 502
    expected = status if on_failure == "raise" else 502
    for path in ("/v1/rerank", "/v2/rerank"):
        response = post(server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE, SORTED_PASSAGE]}, path)
        assert response.status_code == expected
        assert "10.1.2.3" not in response.text
        assert "Traceback" not in response.text
        body = response.json()
        message = body["message"] if path == "/v2/rerank" else body["error"]["message"]
        assert message == "rank1 could not judge the documents: PassagesFailedError"
    # nothing failed is remembered: the next request is judged afresh
    backend.error = None
    assert post(server, {"query": LEN_QUERY, "documents": [LEN_PASSAGE]}).status_code == 200


# -- disconnects, on the untrained model (a judgment takes seconds) ----------------------------


@pytest.fixture(scope="module")
def slow(random_reranker) -> Iterator[tuple[RecordingBackend, InProcessServer]]:
    """No disconnect grace: work nobody waits for is aborted at once."""
    backend = RecordingBackend(random_reranker.backend)
    reranker = Rank1Reranker(backend, max_reasoning_tokens=SLOW_BUDGET, cache=False)
    server = InProcessServer(create_app(reranker, disconnect_grace=0))
    yield backend, server
    server.stop()


def send_and_hold(server: InProcessServer, body: dict[str, Any]) -> socket.socket:
    """A raw HTTP request whose client will go away without reading the answer."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head.encode() + payload)
    return sock


def engine_steps(backend: RecordingBackend) -> int:
    return int(backend.inner.engine_stats.steps)  # type: ignore[attr-defined]


def wait_until_engine_idle(backend: RecordingBackend, quiet: float = 1.0, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last, since = engine_steps(backend), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        if engine_steps(backend) != last:
            last, since = engine_steps(backend), time.monotonic()
        assert time.monotonic() < deadline, "the engine kept stepping"


def test_a_client_that_disconnects_aborts_its_engine_requests(slow) -> None:
    backend, server = slow
    wait_until_engine_idle(backend)
    before, calls = engine_steps(backend), len(backend.calls)
    client = send_and_hold(server, {"query": "when was the mill built", "documents": ["The mill was built in 1820."]})
    wait_for(lambda: engine_steps(backend) >= before + 10)
    client.close()
    wait_until_engine_idle(backend)
    ran = engine_steps(backend) - before
    assert ran < SLOW_BUDGET // 2, f"the engine ran {ran} steps of a {SLOW_BUDGET}-token judgment"
    assert len(backend.calls) == calls + 1  # no forced-answer batch followed
    assert metric(server, "rank1_serve_requests_total", endpoint="/v1/rerank", status="499") == 1


def test_a_disconnect_leaves_work_another_client_waits_for(slow) -> None:
    backend, server = slow
    wait_until_engine_idle(backend)
    before, calls = engine_steps(backend), len(backend.calls)
    body = {"query": "where is the harbour light", "documents": ["The harbour light stands on the north pier."]}
    leaver = send_and_hold(server, body)
    wait_for(lambda: engine_steps(backend) >= before + 10)
    with ThreadPoolExecutor(1) as pool:
        stayer = pool.submit(post, server, body)
        wait_for(lambda: metric(server, "rank1_serve_judgment_waits") == 2)  # it joined the first one's judgment
        leaver.close()
        response = stayer.result()
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert (result["reasoning_tokens"], result["forced"]) == (SLOW_BUDGET, True)  # ran to the end
    # one reasoning batch and its forced answer: the second client never started its own
    assert [len(prompts) for _, prompts in backend.calls[calls:]] == [1, 1]
    assert metric(server, "rank1_serve_shared_judgments_total") == 1


def test_a_client_that_retries_after_a_disconnect_joins_its_first_attempt(random_reranker, serve) -> None:
    backend = RecordingBackend(random_reranker.backend)
    reranker = Rank1Reranker(backend, max_reasoning_tokens=SLOW_BUDGET, cache=False)
    server = serve(reranker, disconnect_grace=30)
    wait_until_engine_idle(backend)
    before = engine_steps(backend)
    body = {"query": "who rang the church bell", "documents": ["The bell rang at noon every Sunday."]}
    first = send_and_hold(server, body)
    wait_for(lambda: engine_steps(backend) >= before + 10)
    first.close()  # the client timed out ...
    wait_for(lambda: metric(server, "rank1_serve_requests_total", status="499") == 1)
    retry = post(server, body)  # ... and tried again: the judgment it started is still running
    assert retry.status_code == 200
    (result,) = retry.json()["results"]
    assert result["reasoning_tokens"] == SLOW_BUDGET
    assert [len(prompts) for _, prompts in backend.calls] == [1, 1]  # reasoning, forced answer: once
    assert metric(server, "rank1_serve_shared_judgments_total") == 1
