"""The pure judging core: completions in, judgments out (synthetic completions, no engine)."""

from __future__ import annotations

import math

import pytest

from rank1_integrations.backends.base import Completion, CompletionRequest
from rank1_integrations.core.judging import JudgingRun
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PromptBuilder
from rank1_integrations.core.protocol import STOP_STRINGS
from rank1_integrations.core.tokenization import HFPromptTokenizer
from rank1_integrations.errors import BackendError, ModelOutputError
from rank1_integrations.settings import Rank1Settings

TRUE_ID, FALSE_ID = 101, 102
BUDGET = 30


@pytest.fixture(scope="module")
def builder(hf_tokenizer) -> PromptBuilder:
    return PromptBuilder(HFPromptTokenizer(hf_tokenizer), template=None, max_prompt_tokens=500)


class _InSteps:
    """Drives a run the way a batch would: every pending request's result, then the follow-ups."""

    def __init__(self, run: JudgingRun, prompts: list) -> None:
        self.run = run
        started = [(index, run.begin(index, prompt)) for index, prompt in enumerate(prompts)]
        self.pending = [(index, request) for index, request in started if request is not None]

    def advance(self, results: list) -> list[CompletionRequest]:
        assert len(results) == len(self.pending)
        taken = [
            (index, self.run.take(index, result)) for (index, _), result in zip(self.pending, results, strict=True)
        ]
        self.pending = [(index, request) for index, request in taken if request is not None]
        return [request for _, request in self.pending]

    def outcomes(self) -> list:
        return self.run.outcomes()


def _new_run(builder: PromptBuilder, count: int, budget: int = BUDGET) -> JudgingRun:
    positions = [(0, i) for i in range(count)]
    return JudgingRun(builder, positions=positions, label_token_ids=(TRUE_ID, FALSE_ID), max_reasoning_tokens=budget)


def _run(builder: PromptBuilder, passages: list[str]) -> tuple[_InSteps, list[CompletionRequest]]:
    prompts = [builder.build("the query", p) for p in passages]
    steps = _InSteps(_new_run(builder, len(prompts)), prompts)
    return steps, [request for _, request in steps.pending]


def _answered(label: int, lp_true: float, lp_false: float, text: str = "Because.") -> Completion:
    stop = STOP_STRINGS[0] if label == TRUE_ID else STOP_STRINGS[1]
    return Completion((7, 8, 9, label), text, "stop", stop, (lp_true, lp_false))


def _cut_off(text: str, tokens: int = BUDGET) -> Completion:
    return Completion(tuple(range(tokens)), text, "length", None, (-1.0, -2.0))


def test_one_request_per_prompt_with_the_protocols_settings(builder) -> None:
    _, requests = _run(builder, ["a", "b", "c"])
    assert len(requests) == 3
    assert {r.stop for r in requests} == {STOP_STRINGS}
    assert {r.max_tokens for r in requests} == {BUDGET}
    assert {r.label_token_ids for r in requests} == {(TRUE_ID, FALSE_ID)}


def test_natural_answers_become_judgments_without_a_second_pass(builder) -> None:
    run, _ = _run(builder, ["a", "b"])
    follow_up = run.advance(
        [_answered(TRUE_ID, math.log(0.8), math.log(0.2), " It is. "), _answered(FALSE_ID, -3.0, -0.1)]
    )
    assert follow_up == []
    first, second = run.outcomes()
    assert (first.index, first.relevant, first.forced, first.reasoning) == (0, True, False, "It is.")
    assert first.score == pytest.approx(0.8, abs=1e-12)
    assert first.reasoning_tokens == 4
    assert (second.index, second.relevant) == (1, False)
    assert second.score == pytest.approx(1 / (1 + math.exp(2.9)), abs=1e-12)


def test_budget_exhaustion_and_eos_force_an_answer_from_trimmed_reasoning(builder) -> None:
    run, requests = _run(builder, ["a", "b", "c"])
    eos_without_answer = Completion((5, 6, 0), "Done thinking. no answer", "stop", None, None)
    follow_up = run.advance([_answered(TRUE_ID, -0.1, -3.0), _cut_off("First. Second is cut"), eos_without_answer])
    assert len(follow_up) == 2
    assert all(r.max_tokens == 1 and r.stop == () for r in follow_up)
    # The forced prompt extends the original prompt with the trimmed reasoning and </think>.
    assert follow_up[0].prompt_token_ids[: len(requests[1].prompt_token_ids)] == requests[1].prompt_token_ids
    assert (
        run.advance(
            [
                Completion((TRUE_ID,), " true", "length", None, (math.log(0.3), math.log(0.6))),
                Completion((FALSE_ID,), " false", "length", None, (-5.0, -0.01)),
            ]
        )
        == []
    )
    natural, forced_cut, forced_eos = run.outcomes()
    assert not natural.forced
    assert (forced_cut.forced, forced_cut.reasoning, forced_cut.reasoning_tokens) == (True, "First.", BUDGET)
    assert forced_cut.score == pytest.approx(1 / 3, abs=1e-12)
    assert forced_cut.relevant is False
    assert (forced_eos.forced, forced_eos.reasoning) == (True, "Done thinking.")


def test_a_stop_string_whose_last_token_is_not_a_label_is_forced(builder) -> None:
    run, _ = _run(builder, ["a"])
    odd = Completion((7, 8, 55), "Reasoning.", "stop", STOP_STRINGS[0], (-1.0, -1.0))
    assert len(run.advance([odd])) == 1


def test_failures_stay_with_their_passage(builder) -> None:
    run, _ = _run(builder, ["a", "b", "c"])
    run.advance([_answered(TRUE_ID, -0.1, -3.0), BackendError("connection reset"), _answered(FALSE_ID, -3, -0.1)])
    judged, failed, judged_too = run.outcomes()
    assert isinstance(judged, Judgment)
    assert isinstance(judged_too, Judgment)
    assert isinstance(failed, BackendError)
    assert "connection reset" in str(failed)


def test_missing_label_logprobs_at_the_answer_are_a_model_output_error(builder) -> None:
    run, _ = _run(builder, ["a"])
    run.advance([Completion((1, TRUE_ID), "x", "stop", STOP_STRINGS[0], None)])
    (outcome,) = run.outcomes()
    assert isinstance(outcome, ModelOutputError)


@pytest.mark.parametrize(
    "values",
    [(math.nan, -1.0), (-1.0, math.nan), (math.inf, -1.0), (-math.inf, -1.0), (-math.inf, -math.inf), (0.5, -1.0)],
    ids=["nan-true", "nan-false", "inf", "minus-inf", "both-minus-inf", "positive"],
)
def test_invalid_label_logprobs_fail_only_their_own_passage(builder, values) -> None:
    run, _ = _run(builder, ["a", "b", "c", "d"])
    bad_natural = _answered(TRUE_ID, *values)
    follow_up = run.advance(
        [_answered(TRUE_ID, -0.1, -3.0), bad_natural, _cut_off("Cut."), _answered(FALSE_ID, -3, -0.1)]
    )
    run.advance([Completion((FALSE_ID,), " false", "length", None, values)] * len(follow_up))  # the forced one too
    first, natural, forced, last = run.outcomes()
    assert isinstance(natural, ModelOutputError)
    assert isinstance(forced, ModelOutputError)
    assert "invalid label log-probabilities" in str(natural)
    assert isinstance(first, Judgment)
    assert isinstance(last, Judgment)
    assert first.score == pytest.approx(1 / (1 + math.exp(-2.9)))
    assert last.score == pytest.approx(1 / (1 + math.exp(2.9)))


def test_a_label_logprob_of_exactly_zero_is_valid(builder) -> None:
    run, _ = _run(builder, ["a"])
    run.advance([_answered(TRUE_ID, 0.0, -40.0)])
    (judgment,) = run.outcomes()
    assert isinstance(judgment, Judgment)
    assert judgment.score == pytest.approx(1.0)


def test_a_prompt_that_could_not_be_built_is_a_failure_of_its_passage_only(builder) -> None:
    prompts = [builder.build("q", "a"), BackendError("tokenizer server down"), builder.build("q", "c")]
    run = _InSteps(_new_run(builder, 3), prompts)
    requests = [request for _, request in run.pending]
    assert [r.prompt_token_ids for r in requests] == [prompts[0].token_ids, prompts[2].token_ids]
    run.advance([_answered(TRUE_ID, -0.1, -3.0), _answered(FALSE_ID, -3.0, -0.1)])
    first, failed, last = run.outcomes()
    assert (first.index, last.index) == (0, 2)
    assert isinstance(failed, BackendError)


def test_a_result_for_a_passage_that_awaits_none_is_refused(builder) -> None:
    run, _ = _run(builder, ["a"])
    run.advance([_answered(TRUE_ID, -0.1, -3.0)])
    with pytest.raises(BackendError, match="awaits none"):
        run.run.take(0, _answered(TRUE_ID, -0.1, -3.0))


def test_each_passage_advances_on_its_own(builder) -> None:
    prompts = [builder.build("the query", p) for p in ("a", "b")]
    run = _new_run(builder, 2)
    requests = [run.begin(0, prompts[0]), run.begin(1, prompts[1])]
    assert all(r is not None for r in requests)
    forced = run.take(1, _cut_off("Done early."))  # b's forced answer is due before a has finished
    assert forced is not None
    assert (run.outcome(0), run.outcome(1)) == (None, None)
    assert run.take(1, Completion((FALSE_ID,), " false", "length", None, (-3.0, -0.1))) is None
    assert run.outcome(1).forced
    assert run.outcome(0) is None
    assert run.take(0, _answered(TRUE_ID, -0.1, -3.0)) is None
    assert run.outcome(0).relevant is True


def test_positions_name_the_batch_and_index_of_each_passage(builder) -> None:
    prompts = [builder.build("q", p) for p in ("a", "b", "c")]
    run = JudgingRun(
        builder, positions=[(0, 0), (1, 0), (1, 1)], label_token_ids=(TRUE_ID, FALSE_ID), max_reasoning_tokens=5
    )
    run = _InSteps(run, prompts)
    run.advance([_answered(TRUE_ID, -0.1, -3.0), _answered(TRUE_ID, -0.1, -3.0), BackendError("boom")])
    first, second, failed = run.outcomes()
    assert (first.index, second.index) == (0, 0)
    assert isinstance(failed, BackendError)


class _FlakyForcedBuilder(PromptBuilder):
    """Builds forced prompts like the real one, except that it fails (as a dead tokenizer server) on "unlucky"."""

    def build_forced(self, prompt, generated_ids, generated_text):
        if "unlucky" in generated_text:
            raise BackendError("POST /tokenize: connection refused")
        return super().build_forced(prompt, generated_ids, generated_text)


def test_a_forced_prompt_that_cannot_be_built_fails_only_its_passage(hf_tokenizer) -> None:
    builder = _FlakyForcedBuilder(HFPromptTokenizer(hf_tokenizer), template=None, max_prompt_tokens=500)
    run, _ = _run(builder, ["a", "b", "c"])
    follow_up = run.advance([_cut_off("An unlucky one."), _cut_off("A fine one."), _answered(TRUE_ID, -0.1, -3.0)])
    assert len(follow_up) == 1
    assert run.advance([Completion((TRUE_ID,), " true", "length", None, (-0.2, -1.9))]) == []
    failed, forced, natural = run.outcomes()
    assert isinstance(failed, BackendError)
    assert (forced.forced, forced.reasoning) == (True, "A fine one.")
    assert not natural.forced


def _probe(p_true: float) -> Completion:
    """A no-think answer: one generated label with the two label log-probabilities."""
    return Completion((TRUE_ID,), " true", "length", None, (math.log(p_true), math.log(1 - p_true)))


def test_adaptive_reasons_per_query_once_its_no_think_scores_are_all_in(builder) -> None:
    settings = Rank1Settings.model_construct(reasoning_effort="adaptive", adaptive_margin=0.1, adaptive_top_k=1)
    positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    run = JudgingRun(
        builder, positions=positions, label_token_ids=(TRUE_ID, FALSE_ID), max_reasoning_tokens=BUDGET, effort=settings
    )
    prompts = [builder.build("q", f"passage {i}") for i in range(len(positions))]
    probes = [run.begin(i, prompt) for i, prompt in enumerate(prompts)]
    assert all(r is not None and r.max_tokens == 1 and r.stop == () for r in probes)
    assert run.take(0, _probe(0.95)) is None  # query 0: top 1
    assert run.take(1, _probe(0.55)) is None  # query 0: uncertain
    assert run.take(3, BackendError("down")) is None  # query 1: a failed probe still counts as in
    assert run.drain() == ([], [3])  # query 0 still waits for passage 2
    assert run.take(2, _probe(0.1)) is None
    due, final = run.drain()
    assert sorted(i for i, _ in due) == [0, 1]
    assert all(r.max_tokens == BUDGET and r.prompt_token_ids == prompts[i].token_ids for i, r in due)
    assert final == [2]
    assert run.outcome(2) == Judgment(2, pytest.approx(0.1), False, "", reasoning_effort="adaptive", reasoned=False)
    assert run.take(4, _probe(0.2)) is None
    due, final = run.drain()  # query 1: its only score is its top 1
    assert [i for i, _ in due] == [4]
    assert final == []
    assert run.take(0, _answered(TRUE_ID, -0.1, -3.0)) is None
    judged = run.outcome(0)
    assert isinstance(judged, Judgment)
    assert (judged.reasoned, judged.reasoning_effort, judged.reasoning_tokens) == (True, "adaptive", 4)


def test_no_think_judges_from_one_label_position_and_rejects_broken_log_probabilities(builder) -> None:
    settings = Rank1Settings.model_construct(reasoning_effort="none")
    run = JudgingRun(
        builder,
        positions=[(0, 0), (0, 1)],
        label_token_ids=(TRUE_ID, FALSE_ID),
        max_reasoning_tokens=BUDGET,
        effort=settings,
    )
    prompt = builder.build("q", "p")
    request = run.begin(0, prompt)
    assert request is not None
    assert request.prompt_token_ids[: len(prompt.token_ids)] == prompt.token_ids
    assert request.prompt_token_ids == builder.build_no_think(prompt, settings.no_think_prefill)
    run.begin(1, prompt)
    assert run.take(0, _probe(0.7)) is None
    assert run.take(1, Completion((TRUE_ID,), " true", "length", None, (math.nan, -1.0))) is None
    assert run.drain() == ([], [0, 1])
    assert run.outcome(0) == Judgment(0, pytest.approx(0.7), True, "", reasoning_effort="none", reasoned=False)
    assert isinstance(run.outcome(1), ModelOutputError)
