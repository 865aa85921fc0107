"""Every score equals an independent float64 forward pass over exactly the token ids sent (real engines).

The models: rank1's three real tokenizers (Qwen2.5, Llama 3.1, Mistral tekken) in random models
of their real vocabulary sizes that write cut characters and control tokens
(``tests/models/real_tokenizers.py``); the chaos model (random weights, a BOS tokenizer with
``<think>`` tokens; its reasoning is full of control tokens, U+FFFD and characters cut by the
budget); SmolLM2-135M-Instruct (a real small model, not rank1; ``<think>`` is text in its
vocabulary) and the scripted model (natural answers). The expected forced ids and the scores
come from ``tests/reference.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from rank1_integrations import Judgment, Rank1Reranker
from rank1_integrations.backends.base import Completion
from rank1_integrations.core.tokenization import Data, Trusted, encode_prompt
from tests import reference
from tests.conftest import ENGINE_KWARGS, SCRIPTED_BUDGET
from tests.models.real_tokenizers import REAL
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, SORTED_PASSAGE
from tests.recording import RecordingBackend

pytestmark = pytest.mark.engine

TOLERANCE = 1e-3
CONTEXT = ENGINE_KWARGS["max_model_len"]
QUERY = "what does the len function return"
PASSAGES = [
    "Return the length (the number of items) of an object.",
    "日本語のテキスト with café and an emoji 🙂.",
    "The sorted function returns a new sorted list from the items in an iterable.",
]
CHAOS_BUDGETS = (2, 3, 10, 15, 34, 60)
"""Cut after a lead byte, inside the quoted <think>, after </think>, after a sentence end, before the EOS, at it."""
REAL_BUDGETS = (2, 9, 12, 30)
"""The real-tokenizer models' REASONING: cut after a lead byte, at a sentence end, inside a character, at the EOS."""


def judged(backend, budget: int, passages: Sequence[str] = PASSAGES, **settings) -> tuple[RecordingBackend, list]:
    recording = RecordingBackend(backend)
    reranker = Rank1Reranker(recording, max_reasoning_tokens=budget, cache=False, **settings)
    return recording, reranker.judge(QUERY, list(passages))


def check_against_reference(
    model_dir: Path,
    passages: Sequence[str],
    recording: RecordingBackend,
    judgments: list[Judgment],
    context: int = CONTEXT,
) -> list[tuple[Judgment, Completion, tuple[int, ...]]]:
    """Assert every score equals the reference's over the ids sent, and every forced prompt is the authors'
    where theirs fits ``context`` with its answer; return (judgment, completion, ids scored)."""
    checked = []
    for passage, judgment, exchange in zip(passages, judgments, recording.exchanges(), strict=True):
        request, completion = exchange.request, exchange.completion
        assert isinstance(completion, Completion)
        assert (exchange.forced is not None) == judgment.forced
        if exchange.forced is not None:
            sent = exchange.forced.prompt_token_ids
            prompt_text = reference.PROMPT.format(query=QUERY, passage=passage)
            assert list(sent) == reference.expected_forced_ids(
                model_dir, prompt_text, completion.token_ids, completion.text, judgment.reasoning
            )
            assert len(sent) < context  # with its answer
            trimmed = reference.trimmed(completion.text)
            if judgment.reasoning != trimmed:  # cut to fit: only when the authors' prompt would not have
                assert trimmed.startswith(judgment.reasoning)
                whole = reference.expected_forced_ids(
                    model_dir, prompt_text, completion.token_ids, completion.text, trimmed
                )
                assert len(whole) >= context
        else:
            sent = request.prompt_token_ids + completion.token_ids[:-1]  # the answer position
        assert judgment.score is not None
        assert judgment.score == pytest.approx(reference.score_of_ids(model_dir, sent), abs=TOLERANCE)
        checked.append((judgment, completion, sent))
    return checked


@pytest.fixture(scope="module")
def real_runs(real_backend) -> dict[tuple[str, int], tuple[RecordingBackend, list[Judgment]]]:
    return {(family, budget): judged(real_backend(family), budget) for family in REAL for budget in REAL_BUDGETS}


@pytest.mark.parametrize("budget", REAL_BUDGETS)
@pytest.mark.parametrize("family", sorted(REAL))
def test_real_tokenizer_scores_equal_the_reference_over_the_ids_sent(
    real_runs, real_model_dir, family: str, budget: int
) -> None:
    recording, judgments = real_runs[family, budget]
    checked = check_against_reference(real_model_dir(family), PASSAGES, recording, judgments)
    assert all(j.forced for j, _, _ in checked)  # </think> is text the model never writes


@pytest.mark.parametrize("family", sorted(REAL))
def test_the_real_tokenizer_models_write_what_a_forced_answer_must_survive(real_runs, real_backend, family) -> None:
    tokenizer = real_backend(family).tokenizer
    completions = {b: real_runs[family, b][0].results[0][0] for b in REAL_BUDGETS}
    assert completions[2].text == " The"  # a lead byte cut off by the budget: no U+FFFD yet
    assert tokenizer.decode(completions[2].token_ids).endswith("\ufffd")
    assert completions[12].finish_reason == "length"
    assert "\ufffd" in completions[30].text
    generated_controls = {tokenizer.control_tokens.get(i) for i in completions[30].token_ids}
    assert REAL[family].control in generated_controls
    assert completions[30].finish_reason == "stop"  # the EOS


@pytest.fixture(scope="module")
def chaos_runs(chaos_backend) -> dict[int, tuple[RecordingBackend, list[Judgment]]]:
    return {budget: judged(chaos_backend, budget) for budget in CHAOS_BUDGETS}


@pytest.mark.parametrize("budget", CHAOS_BUDGETS)
def test_chaos_scores_equal_the_reference_over_the_ids_sent(chaos_runs, chaos_model_dir, budget: int) -> None:
    recording, judgments = chaos_runs[budget]
    checked = check_against_reference(chaos_model_dir, PASSAGES, recording, judgments)
    assert all(j.forced for j, _, _ in checked)


def test_the_chaos_model_writes_what_a_forced_answer_must_survive(chaos_runs, chaos_backend) -> None:
    tokenizer = chaos_backend.tokenizer
    completions = {b: r.results[0][0] for b, (r, _) in chaos_runs.items()}
    assert completions[2].text == " The"  # a lead byte cut off by the budget: no U+FFFD yet
    assert tokenizer.decode(completions[2].token_ids).endswith("\ufffd")
    assert "\ufffd" in completions[60].text
    generated_controls = set(completions[60].token_ids) & set(tokenizer.control_tokens)
    assert {tokenizer.control_tokens[i] for i in generated_controls} >= {"</think>", "<|begin_of_text|>"}
    assert " <think>" in completions[60].text  # written as characters
    assert completions[60].finish_reason == "stop"  # the EOS
    assert completions[34].finish_reason == "length"


@pytest.mark.parametrize("budget", [34, 60])
def test_reasoning_that_re_tokenizes_longer_than_generated_is_the_authors_where_the_context_has_room(
    chaos_runs, chaos_model_dir, budget: int
) -> None:
    """U+FFFD from cut characters re-tokenizes into more tokens than generated it: nothing is cut for that."""
    recording, judgments = chaos_runs[budget]
    for passage, judgment, exchange in zip(PASSAGES, judgments, recording.exchanges(), strict=True):
        completion, prompt = exchange.completion, exchange.request.prompt_token_ids
        assert isinstance(completion, Completion)
        assert exchange.forced is not None
        trimmed = reference.trimmed(completion.text)
        prompt_text = reference.PROMPT.format(query=QUERY, passage=passage)
        authors = reference.expected_forced_ids(
            chaos_model_dir, prompt_text, completion.token_ids, completion.text, trimmed
        )
        assert len(authors) > len(prompt) + len(completion.token_ids) + 15  # the degenerate case
        assert len(authors) < CONTEXT  # room for it and its answer
        assert judgment.reasoning == trimmed
        assert list(exchange.forced.prompt_token_ids) == authors
        assert judgment.score == pytest.approx(reference.score_of_ids(chaos_model_dir, authors), abs=1e-5)


def test_a_forced_prompt_uses_the_whole_context_but_the_answer_position(
    chaos_runs, chaos_backend, chaos_model_dir
) -> None:
    """The authors' prompt is kept at exactly context - 1 tokens, and cut back at one token more."""
    budget, passage = 34, PASSAGES[0]
    completion = chaos_runs[budget][0].exchanges()[0].completion
    assert isinstance(completion, Completion)
    trimmed = reference.trimmed(completion.text)
    prompt_text = reference.PROMPT.format(query=QUERY, passage=passage)
    authors = reference.expected_forced_ids(
        chaos_model_dir, prompt_text, completion.token_ids, completion.text, trimmed
    )
    roomy, (whole,) = judged(chaos_backend, budget, [passage], context_size=len(authors) + 1)
    assert whole.reasoning == trimmed
    assert roomy.exchanges()[0].forced.prompt_token_ids == tuple(authors)
    tight, (cut,) = judged(chaos_backend, budget, [passage], context_size=len(authors))
    assert cut.judged
    assert trimmed.startswith(cut.reasoning)
    assert cut.reasoning != trimmed
    assert cut.reasoning == reference.trimmed(cut.reasoning)  # back to a sentence end
    check_against_reference(chaos_model_dir, [passage], tight, [cut], context=len(authors))


def test_keeping_the_models_control_tokens_is_what_makes_the_scores_right(chaos_runs, chaos_model_dir, chaos_backend):
    """The same reasoning encoded as data (every special-token string as characters) scores differently."""
    recording, judgments = chaos_runs[15]
    tokenizer = chaos_backend.tokenizer
    differences = []
    for (judgment, _, sent), exchange in zip(
        check_against_reference(chaos_model_dir, PASSAGES, recording, judgments), recording.exchanges(), strict=True
    ):
        request = exchange.request
        continuation = (Trusted("\n"), Data(judgment.reasoning), Trusted("\n"), Trusted("</think>"))
        as_data = request.prompt_token_ids + tuple(encode_prompt(tokenizer, continuation, leading=False))
        assert as_data != sent
        differences.append(abs(reference.score_of_ids(chaos_model_dir, as_data) - judgment.score))
    assert max(differences) > 10 * TOLERANCE


def test_a_forced_prompt_at_a_near_maximum_prompt_fits(chaos_backend, chaos_model_dir) -> None:
    budget, context = 34, 256
    long_passage = "The quick brown fox — 狐 — jumps over the lazy dog. " * 60
    recording, judgments = judged(chaos_backend, budget, [long_passage, PASSAGES[0]], context_size=context)
    first, _ = recording.exchanges()
    prompt = first.request.prompt_token_ids
    assert judgments[0].truncated
    assert len(prompt) >= context - budget - 2
    assert first.forced is not None
    assert isinstance(first.completion, Completion)
    assert len(first.forced.prompt_token_ids) + 1 <= context
    # Re-tokenized, the reasoning outgrows the room the budget left: cut back, as little as fits.
    assert judgments[0].reasoning != reference.trimmed(first.completion.text)
    assert all(j.judged for j in judgments)
    shown = Rank1Reranker(chaos_backend, max_reasoning_tokens=budget, context_size=context).build_prompt(
        QUERY, long_passage
    )
    cut_passage = shown.text.partition("\nPassage: ")[2].removesuffix("\n<think>")
    check_against_reference(chaos_model_dir, [cut_passage, PASSAGES[0]], recording, judgments, context=context)


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_truncation_with_a_bos_tokenizer_on_the_embedded_engine(real_backend, real_model_dir, family: str) -> None:
    model_dir = real_model_dir(family)
    hf = reference.tokenizer(model_dir)
    reranker = Rank1Reranker(real_backend(family), max_reasoning_tokens=16, context_size=200, cache=False)
    passage = "日本語のテキスト、café crème 🙂 and more words. " * 40
    prompt = reranker.build_prompt(QUERY, passage)
    cut = prompt.text.partition("\nPassage: ")[2].removesuffix("\n<think>")
    assert prompt.truncated
    assert passage.startswith(cut)
    assert cut
    assert prompt.token_ids[0] == hf.bos_token_id
    assert prompt.token_ids.count(hf.bos_token_id) == 1
    assert list(prompt.token_ids) == hf(prompt.text)["input_ids"]
    whole = hf(reference.PROMPT.format(query=QUERY, passage=passage))["input_ids"]
    assert prompt.passage_tokens_dropped == len(whole) - len(prompt.token_ids)
    (judgment,) = reranker.judge(QUERY, [passage])
    assert judgment.truncated
    assert judgment.judged


@pytest.mark.parametrize("budget", [8, 24])
def test_smollm2_scores_equal_the_reference_over_the_ids_sent(smollm2_backend, smollm2_dir, budget: int) -> None:
    recording, judgments = judged(smollm2_backend, budget)
    checked = check_against_reference(smollm2_dir, PASSAGES, recording, judgments)
    assert any(j.forced for j, _, _ in checked)
    # <think> is text in SmolLM2's vocabulary: the prompt's ids are reused up to it.
    think = tuple(smollm2_backend.tokenizer.encode_plain("<think>"))
    for (judgment, _, sent), exchange in zip(checked, recording.exchanges(), strict=True):
        request = exchange.request
        if judgment.forced:
            reused = len(request.prompt_token_ids) - len(think)
            assert sent[:reused] == request.prompt_token_ids[:reused]


def test_natural_scores_equal_the_reference_at_the_answer_position(scripted_reranker, scripted_model_dir) -> None:
    recording = RecordingBackend(scripted_reranker.backend)
    passages = [LEN_PASSAGE, SORTED_PASSAGE]
    judgments = Rank1Reranker(recording, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False).judge(LEN_QUERY, passages)
    assert not any(j.forced for j in judgments)
    for judgment, exchange in zip(judgments, recording.exchanges(), strict=True):
        request, completion = exchange.request, exchange.completion
        assert isinstance(completion, Completion)
        sent = request.prompt_token_ids + completion.token_ids[:-1]
        assert judgment.score == pytest.approx(reference.score_of_ids(scripted_model_dir, sent), abs=TOLERANCE)
