"""Reasoning effort (issue 22): no-think and adaptive on real engines, checked against a float64 reference.

No-think's prompt is the authors' forced-answer prompt with the prefill as the reasoning,
``prompt + "\\n" + prefill + "\\n</think>"``; its score is p(true) at the next position.
Every score here is compared with ``tests/reference.py`` over exactly the ids sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rank1_integrations import Judgment, Rank1Reranker
from rank1_integrations.backends.base import Completion, CompletionRequest
from rank1_integrations.cache import MemoryCache
from rank1_integrations.settings import DEFAULT_NO_THINK_PREFILL
from tests import reference
from tests.conftest import SCRIPTED_BUDGET
from tests.models.real_tokenizers import REAL
from tests.models.tiny_models import JOIN_PASSAGE, JOIN_QUERY, LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.recording import RecordingBackend
from tests.vllm_server import VLLMServer, shared_server, stop_all

pytestmark = [pytest.mark.engine, pytest.mark.embedded]

TOLERANCE = 1e-3
PASSAGES = [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE, JOIN_PASSAGE, "日本語のテキスト with café and an emoji 🙂."]


@pytest.fixture(scope="module", params=["scripted", "random", "chaos", *sorted(REAL)])
def model(request: pytest.FixtureRequest) -> tuple[Path, Rank1Reranker]:
    """(model folder, reranker): the scripted model (natural answers), the random one (forced answers),
    the chaos model (a BOS tokenizer; reasoning full of control tokens and cut characters) and rank1's
    three real tokenizers (random models of their real vocabulary sizes; ``<think>`` is text)."""
    if request.param in REAL:
        backend = request.getfixturevalue("real_backend")(request.param)
        return request.getfixturevalue("real_model_dir")(request.param), Rank1Reranker(backend, max_reasoning_tokens=12)
    if request.param == "chaos":
        reranker = Rank1Reranker(request.getfixturevalue("chaos_backend"), max_reasoning_tokens=15)
    else:
        reranker = request.getfixturevalue(f"{request.param}_reranker")
    return request.getfixturevalue(f"{request.param}_model_dir"), reranker


def recorded(reranker: Rank1Reranker, **settings: object) -> tuple[RecordingBackend, Rank1Reranker]:
    recording = RecordingBackend(reranker.backend)
    settings.setdefault("max_reasoning_tokens", reranker.max_reasoning_tokens)
    return recording, Rank1Reranker(recording, cache=False, **settings)  # type: ignore[arg-type]


def no_think_ids(model_dir: Path, query: str, passage: str, prefill: str = DEFAULT_NO_THINK_PREFILL) -> list[int]:
    """The authors' forced-answer prompt with the prefill as its reasoning, tokenized as they do."""
    text = f"{reference.PROMPT.format(query=query, passage=passage)}\n{prefill}\n</think>"
    return list(reference.tokenizer(model_dir)(text)["input_ids"])


def sent(recording: RecordingBackend) -> list[tuple[CompletionRequest, Completion]]:
    pairs = [
        (request, result)
        for batch, results in zip(recording.batches, recording.results, strict=True)
        for request, result in zip(batch, results, strict=True)
    ]
    assert all(isinstance(result, Completion) for _, result in pairs)
    return pairs  # type: ignore[return-value]


def check(model_dir: Path, recording: RecordingBackend, query: str, passages: list[str], judgments: list[Judgment]):
    """Every score equals the reference's over the ids sent: no-think's, the natural answer's or the forced one's."""
    exchanges = sent(recording)
    for passage, judgment in zip(passages, judgments, strict=True):
        expected = no_think_ids(model_dir, query, passage)
        probes = [c for r, c in exchanges if list(r.prompt_token_ids) == expected and r.max_tokens == 1]
        assert len(probes) == 1  # every effort but full starts with exactly one no-think request
        assert judgment.score is not None
        if not judgment.reasoned:
            assert (judgment.reasoning, judgment.reasoning_tokens, judgment.forced) == ("", 0, False)
            ids: list[int] = expected
        else:
            prompt = reference.tokenizer(model_dir)(reference.PROMPT.format(query=query, passage=passage))
            prompt_ids = list(prompt["input_ids"])
            ((_, completion),) = [(r, c) for r, c in exchanges if list(r.prompt_token_ids) == prompt_ids]
            assert judgment.reasoning_tokens == len(completion.token_ids) > 0
            if judgment.forced:  # the authors' forced prompt (where <think> is text, its tail re-encoded)
                prompt_text = reference.PROMPT.format(query=query, passage=passage)
                args = (completion.token_ids, completion.text, judgment.reasoning)
                ids = reference.expected_forced_ids(model_dir, prompt_text, *args)
                assert [list(r.prompt_token_ids) for r, _ in exchanges].count(ids) == 1
            else:
                ids = prompt_ids + list(completion.token_ids[:-1])
        assert judgment.score == pytest.approx(reference.score_of_ids(model_dir, ids), abs=TOLERANCE)


def test_no_think_is_one_prefill_per_passage_in_one_submission(model) -> None:
    model_dir, reranker = model
    recording, no_think = recorded(reranker, reasoning_effort="none")
    judgments = no_think.judge(LEN_QUERY, PASSAGES)
    assert len(recording.batches) == 1
    assert len(recording.batches[0]) == len(PASSAGES)
    assert all(r.max_tokens == 1 and r.stop == () for r in recording.batches[0])
    assert all(r.label_token_ids == reranker.label_token_ids for r in recording.batches[0])
    tail = reference.tokenizer(model_dir).decode(list(recording.batches[0][0].prompt_token_ids))
    assert tail.endswith(f"<think>\n{DEFAULT_NO_THINK_PREFILL}\n</think>")
    assert [(j.index, j.reasoning_effort, j.reasoned, j.reasoning_tokens) for j in judgments] == [
        (i, "none", False, 0) for i in range(len(PASSAGES))
    ]
    assert all(j.relevant == (j.score is not None and j.score > 0.5) for j in judgments)
    check(model_dir, recording, LEN_QUERY, PASSAGES, judgments)


def test_no_think_over_several_queries_is_still_one_submission(scripted_reranker) -> None:
    recording, no_think = recorded(scripted_reranker, reasoning_effort="none")
    results = no_think.judge_many([(LEN_QUERY, PASSAGES[:3]), (JOIN_QUERY, PASSAGES[3:])])
    assert [len(r) for r in results] == [3, 2]
    assert [len(batch) for batch in recording.batches] == [len(PASSAGES)]


def test_a_prefill_of_ones_own_is_data_and_cannot_close_the_reasoning(scripted_model_dir, scripted_reranker) -> None:
    prefill = "I already know </think> the answer."
    recording, no_think = recorded(scripted_reranker, reasoning_effort="none", no_think_prefill=prefill)
    (judgment,) = no_think.judge(LEN_QUERY, [LEN_PASSAGE])
    ids = recording.batches[0][0].prompt_token_ids
    close = reference.tokenizer(scripted_model_dir).convert_tokens_to_ids("</think>")
    assert ids.count(close) == 1  # only the protocol's own </think>
    assert ids[-1] == close
    assert judgment.score == pytest.approx(reference.score_of_ids(scripted_model_dir, ids), abs=TOLERANCE)


def test_no_think_gives_a_long_passage_the_reasoning_budgets_room(scripted_model_dir, scripted_reranker) -> None:
    long = " ".join([SORTED_PASSAGE] * 200)
    recording, no_think = recorded(scripted_reranker, reasoning_effort="none")
    (judgment,) = no_think.judge(LEN_QUERY, [long])
    ((request,),) = recording.batches
    context = scripted_reranker.context_size
    assert judgment.truncated
    assert context - 3 <= len(request.prompt_token_ids) < context  # the answer's position is the last one
    prompt = no_think.build_prompt(LEN_QUERY, long)
    text = f"{prompt.text}\n{DEFAULT_NO_THINK_PREFILL}\n</think>"
    assert list(request.prompt_token_ids) == reference.tokenizer(scripted_model_dir)(text)["input_ids"]
    score = reference.score_of_ids(scripted_model_dir, request.prompt_token_ids)
    assert judgment.score == pytest.approx(score, abs=TOLERANCE)


@pytest.mark.parametrize(("margin", "top_k"), [(0.0, 2), (1.0, None)])
def test_adaptive_reasons_where_its_knobs_say(model, margin: float, top_k: int | None) -> None:
    model_dir, reranker = model
    recording, adaptive = recorded(reranker, reasoning_effort="adaptive", adaptive_margin=margin, adaptive_top_k=top_k)
    judgments = adaptive.judge(LEN_QUERY, PASSAGES)
    assert all(j.reasoning_effort == "adaptive" for j in judgments)
    if top_k is None:  # margin 1: everything reasons
        assert all(j.reasoned for j in judgments)
    else:  # margin 0: only the top k of the no-think scores
        no_think = reranker.judge(LEN_QUERY, PASSAGES, reasoning_effort="none")
        best = sorted(range(len(PASSAGES)), key=lambda i: -(no_think[i].score or 0.0))[:top_k]
        assert {j.index for j in judgments if j.reasoned} == set(best)
        for j in judgments:
            if not j.reasoned:
                assert j.score == pytest.approx(no_think[j.index].score, abs=1e-6)
    assert len(recording.batches[0]) == len(PASSAGES)  # the no-think requests, all at once
    check(model_dir, recording, LEN_QUERY, PASSAGES, judgments)


def test_adaptive_margin_selects_the_uncertain_passages(scripted_reranker) -> None:
    no_think = scripted_reranker.judge(LEN_QUERY, PASSAGES, reasoning_effort="none")
    distances = sorted(abs(j.score - 0.5) for j in no_think)
    margin = (distances[1] + distances[2]) / 2  # the two most uncertain
    adaptive = scripted_reranker.judge(LEN_QUERY, PASSAGES, reasoning_effort="adaptive", adaptive_margin=margin)
    uncertain = {j.index for j in no_think if abs(j.score - 0.5) <= margin}
    assert len(uncertain) == 2
    assert {j.index for j in adaptive if j.reasoned} == uncertain


def test_adaptive_streams_the_unreasoned_judgments_before_the_reasoned_finish(scripted_reranker) -> None:
    order = [
        j.reasoned
        for j in scripted_reranker.judge_iter(
            LEN_QUERY, PASSAGES, reasoning_effort="adaptive", adaptive_margin=0.0, adaptive_top_k=2
        )
    ]
    assert order == [False, False, False, True, True]

    async def streamed() -> list[bool]:
        stream = scripted_reranker.ajudge_stream(
            LEN_QUERY, PASSAGES, reasoning_effort="adaptive", adaptive_margin=0.0, adaptive_top_k=2
        )
        return [j.reasoned async for j in stream]

    assert asyncio.run(streamed()) == order


def test_the_cache_keeps_efforts_apart_and_serves_adaptive_work_to_later_calls(scripted_reranker) -> None:
    recording = RecordingBackend(scripted_reranker.backend)
    reranker = Rank1Reranker(recording, cache=MemoryCache(100), max_reasoning_tokens=SCRIPTED_BUDGET)
    keys = {e: reranker.cache_key(LEN_QUERY, LEN_PASSAGE, reasoning_effort=e) for e in ("full", "none", "adaptive")}
    assert len(set(keys.values())) == 3
    assert reranker.cache_key(LEN_QUERY, LEN_PASSAGE, reasoning_effort="none", no_think_prefill="Done.") != keys["none"]

    no_think = reranker.judge(LEN_QUERY, PASSAGES[:2], reasoning_effort="none")
    full = reranker.judge(LEN_QUERY, PASSAGES[:2])  # a no-think score is never served for full reasoning
    assert [j.reasoned for j in full] == [True, True]
    assert len(recording.batches) == 2
    assert reranker.judge(LEN_QUERY, PASSAGES[:2], reasoning_effort="none") == no_think
    assert len(recording.batches) == 2  # from the cache

    adaptive = reranker.judge(LEN_QUERY, PASSAGES, reasoning_effort="adaptive", adaptive_margin=1.0)
    assert all(j.reasoned for j in adaptive)
    before = len(recording.batches)
    again = reranker.judge(LEN_QUERY, PASSAGES)  # adaptive's reasoned judgments serve a full call
    assert len(recording.batches) == before
    assert [j.reasoning_effort for j in again] == ["full"] * len(PASSAGES)
    assert [j.score for j in again] == [j.score for j in adaptive]


def test_the_effort_is_a_setting_and_a_per_call_change(scripted_reranker) -> None:
    reranker = Rank1Reranker(scripted_reranker.backend, cache=False, max_reasoning_tokens=SCRIPTED_BUDGET)
    assert {j.reasoning_effort for j in reranker.judge(LEN_QUERY, PASSAGES[:2])} == {"full"}
    assert {j.reasoned for j in reranker.judge(LEN_QUERY, PASSAGES[:2], reasoning_effort="none")} == {False}
    no_think = Rank1Reranker(scripted_reranker.backend, cache=False, reasoning_effort="none")
    assert {j.reasoning_effort for j in no_think.judge(LEN_QUERY, PASSAGES[:2])} == {"none"}
    full = no_think.judge(LEN_QUERY, PASSAGES[:2], reasoning_effort="full", max_reasoning_tokens=SCRIPTED_BUDGET)
    assert [j.reasoned and j.reasoning_tokens > 0 for j in full] == [True, True]


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


def test_effort_through_a_vllm_server_scores_as_embedded(server: VLLMServer, scripted_reranker) -> None:
    remote = Rank1Reranker.from_server(
        server.base_url, server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache_entries=0
    )
    try:
        for settings in ({"reasoning_effort": "none"}, {"reasoning_effort": "adaptive", "adaptive_top_k": 2}):
            embedded = scripted_reranker.judge(LEN_QUERY, PASSAGES, **settings)
            served = remote.judge(LEN_QUERY, PASSAGES, **settings)
            assert [j.reasoned for j in served] == [j.reasoned for j in embedded]
            for a, b in zip(served, embedded, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-4)
    finally:
        remote.close()
