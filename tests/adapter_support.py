"""Shared by the adapter tests: a real (tiny) embedding, a recording backend, the scripted truth."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rank1_integrations import Judgment, Rank1Reranker
from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult, ResultSink
from rank1_integrations.errors import BackendError
from rank1_integrations.settings import Rank1Settings
from tests.conftest import IN_PROCESS_ENGINE, SCRIPTED_BUDGET
from tests.models.tiny_models import (
    JOIN_PASSAGE,
    JOIN_QUERY,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
)
from tests.vllm_server import VLLMServer, shared_server, stop_all

TOLERANCE = 1e-4
"""Scores match ``reranker.judge`` on the same passages (batch composition may move the last digits)."""
REMOTE_TOLERANCE = 1e-3
"""A server process computes with its own kernels and batches: a looser bound against the embedded engine."""
BREAD = "Preheat the oven and bake the bread for forty minutes until golden."
KNOWN = (LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE, JOIN_PASSAGE)

_STOP_WORDS = frozenset(
    {"a", "an", "and", "are", "be", "can", "do", "does", "from", "how", "i", "if", "in", "is", "it", "may", "of"}
    | {"on", "or", "the", "this", "to", "what", "which", "with"}
)


def hashed_embedding(text: str, dims: int = 512) -> list[float]:
    """Hashed words and character trigrams, L2-normalised: lexical retrieval, deterministic."""
    vector = [0.0] * dims
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word not in _STOP_WORDS:
            for feature in [word] + [f"<{word}>"[i : i + 3] for i in range(len(word))]:
                vector[int(hashlib.blake2b(feature.encode(), digest_size=8).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class RecordingBackend:
    """The real engine backend; records each call and the passages sent, and fails chosen passages."""

    def __init__(self, inner: Backend, *, fail: Sequence[str] = ()) -> None:
        self.inner, self.fail = inner, tuple(fail)
        self.calls: list[tuple[str, list[str]]] = []

    model_name = property(lambda self: self.inner.model_name)
    tokenizer = property(lambda self: self.inner.tokenizer)
    max_model_len = property(lambda self: self.inner.max_model_len)

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        return self.forward(requests, self._record(requests), on_result)

    def forward(self, requests: Sequence[CompletionRequest], prompts: list[str], on_result: ResultSink) -> Future[Any]:
        """Send recorded requests to the real engine, failing the chosen passages' results."""

        def inject(position: int, result: CompletionResult) -> None:
            failed = any(p in prompts[position] for p in self.fail)
            on_result(position, BackendError("injected failure") if failed else result)

        return self.inner.submit(requests, inject)

    def sent(self) -> list[str]:
        """The passages of the first (reasoning) batch."""
        return [next(p for p in KNOWN if p in prompt) for _, prompts in self.calls[:1] for prompt in prompts]

    def _record(self, requests: Sequence[CompletionRequest]) -> list[str]:
        prompts = [self.inner.tokenizer.decode(r.prompt_token_ids) for r in requests]
        self.calls.append(("submit", prompts))
        return prompts


class EntryPoints(Rank1Reranker):
    """A real reranker that notes which of its entry points an adapter called."""

    entry_points: list[str]

    def judge(self, *args: Any, **kwargs: Any) -> list[Judgment]:
        self.entry_points.append("judge")
        return super().judge(*args, **kwargs)

    async def ajudge(self, *args: Any, **kwargs: Any) -> list[Judgment]:
        self.entry_points.append("ajudge")
        return await super().ajudge(*args, **kwargs)

    def judge_iter(self, *args: Any, **kwargs: Any) -> Iterator[Judgment]:
        self.entry_points.append("judge_iter")
        return super().judge_iter(*args, **kwargs)

    def ajudge_stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Judgment, None]:
        self.entry_points.append("ajudge_stream")
        return super().ajudge_stream(*args, **kwargs)


def recording(reranker: Rank1Reranker, *, fail: Sequence[str] = (), on_failure="raise") -> EntryPoints:
    backend = RecordingBackend(reranker.backend, fail=fail)
    spy = EntryPoints(backend, max_reasoning_tokens=SCRIPTED_BUDGET, on_failure=on_failure, cache=False)
    spy.entry_points = []
    return spy


@pytest.fixture(scope="session")
def scripted_server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    """The run's shared vLLM server for the scripted model (started now if it is not running yet)."""
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.fixture(scope="session")
def scripted_server_reranker(scripted_server: VLLMServer) -> Iterator[Rank1Reranker]:
    """The scripted model on the shared server (the adapters' reranker without vLLM here)."""
    server = scripted_server
    remote = Rank1Reranker.from_server(server.base_url, server.model, max_reasoning_tokens=SCRIPTED_BUDGET)
    yield remote
    remote.close()


def with_one_secret(kind: str, server: VLLMServer, *, api_key: str, url_password: str) -> Rank1Settings:
    """Settings for the scripted server with one kind of secret (the remote backend takes one or
    the other): an API key, or credentials in the server URL."""
    host = f"127.0.0.1:{server.port}"
    given: dict[str, object] = {"model": server.model, "max_reasoning_tokens": SCRIPTED_BUDGET, "cache_entries": 0}
    if kind == "api_key":
        return Rank1Settings(servers=(f"http://{host}/v1",), api_key=api_key, **given)
    return Rank1Settings(servers=(f"http://rank1:{url_password}@{host}/v1",), **given)


@pytest.fixture
def no_api_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK1_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


BAD_SETTINGS = [
    ({"top_n": -1}, "greater than or equal to 0"),
    ({"top_n": True}, "valid integer"),
    ({"top_n": 2.0}, "valid integer"),
    ({"top_n": 1, "min_keep": 2}, "cannot exceed top_n"),
    ({"min_keep": -1}, "greater than or equal to 0"),
    ({"min_keep": True}, "valid integer"),
    ({"score_threshold": 2.0}, "less than or equal to 1"),
    ({"score_threshold": True}, "valid number"),
    ({"score_threshold": "0.5"}, "valid number"),
    ({"template": "no marker"}, "FILL_QUERY_HERE"),
    ({"max_reasoning_tokens": 0}, "greater than or equal to 1"),
    ({"max_reasoning_tokens": True}, "valid integer"),
    ({"reasoning_effort": "some"}, "'full', 'none' or 'adaptive'"),
    ({"empty_text": "drop"}, "empty_text"),
    ({"settings": Rank1Settings(model="m")}, "not both"),
    ({"topn": 3}, "Extra inputs are not permitted"),
]
"""Settings both adapters refuse on construction (pydantic's ``ValidationError``), with the message."""

REFUSED_ASSIGNMENTS = [
    ("top_n", -5, "greater than or equal to 0"),
    ("top_n", True, "valid integer"),
    ("top_n", 0, "cannot exceed top_n"),  # with min_keep=1
    ("min_keep", 2, "cannot exceed top_n"),  # with top_n=1
    ("score_threshold", 1.5, "less than or equal to 1"),
    ("template", "no marker", "FILL_QUERY_HERE"),
    ("empty_text", "drop", "empty_text"),
    ("max_reasoning_tokens", 0, "greater than or equal to 1"),
    ("reasoning_effort", "some", "'full', 'none' or 'adaptive'"),
    ("reranker", None, "frozen"),
    ("settings", Rank1Settings(model="m"), "frozen"),
]
"""Assignments both adapters refuse after construction with ``top_n=1, min_keep=1``."""


def assert_assignments_refused(adapter: Any, dump: Callable[[], Any]) -> None:
    """Each of REFUSED_ASSIGNMENTS raises ``ValidationError`` and leaves ``dump()`` as it was."""
    for name, value, message in REFUSED_ASSIGNMENTS:
        before = dump()
        with pytest.raises(ValidationError, match=message):
            setattr(adapter, name, value)
        assert dump() == before, name


@pytest.fixture(scope="module")
def reranker(request: pytest.FixtureRequest) -> Rank1Reranker:
    """The scripted model without a judgment cache (every call here reaches the engine): on the
    session's embedded engine, or on a vLLM server where this process has no vLLM (floor job)."""
    shared = request.getfixturevalue("scripted_reranker" if IN_PROCESS_ENGINE else "scripted_server_reranker")
    return Rank1Reranker(shared.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False)


@pytest.fixture(scope="module")
def truth(reranker) -> dict[str, Judgment]:
    """rank1's judgments of the scripted pairs, straight from the core API."""
    by_len = reranker.judge(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE])
    result = dict(zip(["len", "sorted", "open"], by_len, strict=True))
    result["join"], result["join/len"] = reranker.judge(JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE])
    # what the script promises
    assert [(j.relevant, j.forced) for j in result.values()] == [
        (True, False),
        (False, False),
        (False, True),
        (True, False),
        (False, False),
    ]
    assert result["len"].score > result["open"].score > result["sorted"].score
    return result
