"""The pure decision core of one judging call: prompts -> requests -> completions -> judgments.

:class:`JudgingRun` never waits on I/O. A driver (sync or async) hands its requests
to a backend and feeds the results back with :meth:`JudgingRun.advance` until no
requests remain. The forced answer, the only loop back, is decided here and only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.errors import (
    BackendError,
    ModelOutputError,
    PassageFailure,
    PassagesFailedError,
    Rank1Error,
)
from rank1_integrations.judgment import Judgment
from rank1_integrations.prompting import PreparedPrompt, PromptBuilder
from rank1_integrations.protocol import STOP_STRINGS, label_probability

__all__ = ["FailurePolicy", "JudgingRun"]

FailurePolicy = Literal["raise", "mark_unjudged"]


@dataclass(frozen=True)
class _ForcedAnswer:
    index: int
    reasoning: str
    reasoning_tokens: int
    prompt_token_ids: tuple[int, ...]


class JudgingRun:
    """State of one batch: which passages are judged, which await a forced answer, which failed."""

    def __init__(
        self,
        prompts: Sequence[PreparedPrompt],
        builder: PromptBuilder,
        *,
        positions: Sequence[tuple[int, int]] | None = None,
        label_token_ids: tuple[int, int],
        max_reasoning_tokens: int,
    ) -> None:
        self._prompts = tuple(prompts)
        # (batch, index in batch) of each prompt: what callers of judge_many see.
        self._positions = tuple(positions) if positions is not None else tuple((0, i) for i in range(len(prompts)))
        self._builder = builder
        self._labels = label_token_ids
        self._budget = max_reasoning_tokens
        self._judgments: list[Judgment | None] = [None] * len(self._prompts)
        self._failures: dict[int, Rank1Error] = {}
        self._forced: list[_ForcedAnswer] = []
        self._in_flight: list[int] = []
        self._awaiting: Literal["reasoning", "forced answers", "nothing"] = "reasoning"

    def start(self) -> list[CompletionRequest]:
        """The reasoning requests: one per prompt, all in one batch."""
        self._in_flight = list(range(len(self._prompts)))
        return [
            CompletionRequest(prompt.token_ids, self._budget, STOP_STRINGS, self._labels) for prompt in self._prompts
        ]

    def advance(self, results: Sequence[CompletionResult]) -> list[CompletionRequest]:
        """Take the results of the last requests; return the next requests (empty when done)."""
        if len(results) != len(self._in_flight):
            raise BackendError(f"backend returned {len(results)} results for {len(self._in_flight)} requests")
        if self._awaiting == "forced answers":
            self._take_forced_answers(results)
            self._awaiting = "nothing"
            return []
        for index, result in zip(self._in_flight, results, strict=True):
            if isinstance(result, Rank1Error):
                self._failures[index] = result
            else:
                self._take_reasoning(index, result)
        self._awaiting = "forced answers" if self._forced else "nothing"
        return self._forced_requests()

    def judgments(self, on_failure: FailurePolicy = "raise") -> list[Judgment]:
        """Every passage's judgment, in input order; failures raise or come back unjudged."""
        if self._failures and on_failure == "raise":
            failures = [
                PassageFailure(self._positions[i][1], err, batch=self._positions[i][0])
                for i, err in sorted(self._failures.items())
            ]
            raise PassagesFailedError(failures, total=len(self._prompts))
        result: list[Judgment] = []
        for index, judgment in enumerate(self._judgments):
            if judgment is None:
                error = self._failures.get(index, ModelOutputError("no result"))
                judgment = Judgment(
                    index=self._positions[index][1],
                    score=None,
                    relevant=None,
                    reasoning="",
                    truncated=self._prompts[index].truncated,
                    error=f"{type(error).__name__}: {error}",
                )
            result.append(judgment)
        return result

    def _take_reasoning(self, index: int, completion: Completion) -> None:
        label = completion.token_ids[-1] if completion.token_ids else None
        answered = (
            completion.finish_reason == "stop" and isinstance(completion.stop_reason, str) and label in self._labels
        )
        if not answered:
            try:
                forced = self._builder.build_forced(self._prompts[index], completion.token_ids, completion.text)
            except Rank1Error as err:
                self._failures[index] = err
                return
            self._forced.append(_ForcedAnswer(index, forced.reasoning, len(completion.token_ids), forced.token_ids))
            return
        if completion.final_label_logprobs is None:
            self._failures[index] = ModelOutputError(
                "the backend returned no label log-probabilities at the answer position"
            )
            return
        true_logprob, false_logprob = completion.final_label_logprobs
        self._judgments[index] = Judgment(
            index=self._positions[index][1],
            score=label_probability(true_logprob, false_logprob),
            relevant=label == self._labels[0],
            reasoning=completion.text.strip(),
            forced=False,
            reasoning_tokens=len(completion.token_ids),
            truncated=self._prompts[index].truncated,
        )

    def _forced_requests(self) -> list[CompletionRequest]:
        self._in_flight = [forced.index for forced in self._forced]
        return [
            CompletionRequest(
                forced.prompt_token_ids,
                max_tokens=1,
                stop=(),
                label_token_ids=self._labels,
            )
            for forced in self._forced
        ]

    def _take_forced_answers(self, results: Sequence[CompletionResult]) -> None:
        for forced, result in zip(self._forced, results, strict=True):
            if isinstance(result, Rank1Error):
                self._failures[forced.index] = result
                continue
            if result.final_label_logprobs is None:
                self._failures[forced.index] = ModelOutputError(
                    "the backend returned no label log-probabilities for the forced answer"
                )
                continue
            true_logprob, false_logprob = result.final_label_logprobs
            score = label_probability(true_logprob, false_logprob)
            self._judgments[forced.index] = Judgment(
                index=self._positions[forced.index][1],
                score=score,
                relevant=true_logprob > false_logprob,
                reasoning=forced.reasoning,
                forced=True,
                reasoning_tokens=forced.reasoning_tokens,
                truncated=self._prompts[forced.index].truncated,
            )
