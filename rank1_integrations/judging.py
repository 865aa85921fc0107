"""The pure decision core of one judging call: prompts -> requests -> completions -> judgments.

:class:`JudgingRun` never waits on I/O. A driver (sync or async) hands its requests
to a backend and feeds the results back with :meth:`JudgingRun.advance` until no
requests remain. The forced answer, the only loop back, is decided here and only here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.errors import BackendError, ModelOutputError, Rank1Error
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
        prompts: Sequence[PreparedPrompt | Rank1Error],
        builder: PromptBuilder,
        *,
        positions: Sequence[tuple[int, int]] | None = None,
        label_token_ids: tuple[int, int],
        max_reasoning_tokens: int,
    ) -> None:
        """``prompts`` may hold the error that kept a prompt from being built: that passage has failed."""
        # (batch, index in batch) of each prompt: what callers of judge_many see.
        self._positions = tuple(positions) if positions is not None else tuple((0, i) for i in range(len(prompts)))
        self._builder = builder
        self._labels = label_token_ids
        self._budget = max_reasoning_tokens
        self._prompts: dict[int, PreparedPrompt] = {}
        self._failures: dict[int, Rank1Error] = {}
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, Rank1Error):
                self._failures[index] = prompt
            else:
                self._prompts[index] = prompt
        self._judgments: list[Judgment | None] = [None] * len(prompts)
        self._forced: list[_ForcedAnswer] = []
        self._in_flight: list[int] = []
        self._awaiting: Literal["reasoning", "forced answers", "nothing"] = "reasoning"

    def start(self) -> list[CompletionRequest]:
        """The reasoning requests: one per built prompt, all in one batch."""
        self._in_flight = list(self._prompts)
        return [
            CompletionRequest(self._prompts[index].token_ids, self._budget, STOP_STRINGS, self._labels)
            for index in self._in_flight
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
        requests = self._forced_requests()
        self._awaiting = "forced answers" if requests else "nothing"
        return requests

    def outcomes(self) -> list[Judgment | Rank1Error]:
        """Every passage's judgment, or the error that kept it from one, in input order."""
        return [
            judgment if judgment is not None else self._failures.get(index, ModelOutputError("no result"))
            for index, judgment in enumerate(self._judgments)
        ]

    def _take_reasoning(self, index: int, completion: Completion) -> None:
        label = completion.token_ids[-1] if completion.token_ids else None
        answered = (
            completion.finish_reason == "stop" and isinstance(completion.stop_reason, str) and label in self._labels
        )
        if not answered:
            try:
                forced = self._builder.build_forced(self._prompts[index], completion.token_ids, completion.text)
            except Rank1Error as err:  # e.g. the server's tokenizer failed: this passage only
                self._failures[index] = err
                return
            self._forced.append(_ForcedAnswer(index, forced.reasoning, len(completion.token_ids), forced.token_ids))
            return
        score = _label_score(completion.final_label_logprobs, "at the answer position")
        if isinstance(score, ModelOutputError):
            self._failures[index] = score
            return
        self._judgments[index] = Judgment(
            index=self._positions[index][1],
            score=score,
            relevant=label == self._labels[0],
            reasoning=completion.text.strip(),
            forced=False,
            reasoning_tokens=len(completion.token_ids),
            truncated=self._prompts[index].truncated,
        )

    def _forced_requests(self) -> list[CompletionRequest]:
        self._in_flight = [forced.index for forced in self._forced]
        return [
            CompletionRequest(forced.prompt_token_ids, max_tokens=1, stop=(), label_token_ids=self._labels)
            for forced in self._forced
        ]

    def _take_forced_answers(self, results: Sequence[CompletionResult]) -> None:
        for forced, result in zip(self._forced, results, strict=True):
            if isinstance(result, Rank1Error):
                self._failures[forced.index] = result
                continue
            score = _label_score(result.final_label_logprobs, "for the forced answer")
            if isinstance(score, ModelOutputError):
                self._failures[forced.index] = score
                continue
            self._judgments[forced.index] = Judgment(
                index=self._positions[forced.index][1],
                score=score,
                relevant=score > 0.5,
                reasoning=forced.reasoning,
                forced=True,
                reasoning_tokens=forced.reasoning_tokens,
                truncated=self._prompts[forced.index].truncated,
            )


def _label_score(logprobs: tuple[float, float] | None, where: str) -> float | ModelOutputError:
    """p(true) from the two label log-probabilities, or why they cannot be one.

    A log-probability is finite and at most 0: NaN, an infinity or a positive value is a
    broken answer (it would become a NaN or saturated score, be cached and upset rankings).
    """
    if logprobs is None:
        return ModelOutputError(f"the backend returned no label log-probabilities {where}")
    if not all(_is_number(value) and math.isfinite(value) and value <= 0.0 for value in logprobs):
        shown = ", ".join(repr(value) for value in logprobs)
        return ModelOutputError(f"the backend returned invalid label log-probabilities {where}: ({shown})")
    return label_probability(*logprobs)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
