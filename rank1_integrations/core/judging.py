"""The pure decision core of one judging call, which never waits on I/O: a driver feeds each result back and
gets the passage's next request. The forced answer and adaptive's selection are decided here and only here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PreparedPrompt, PromptBuilder
from rank1_integrations.core.protocol import STOP_STRINGS, label_probability
from rank1_integrations.errors import BackendError, ModelOutputError, Rank1Error
from rank1_integrations.settings import Rank1Settings

FailurePolicy = Literal["raise", "mark_unjudged"]
_FULL = Rank1Settings.model_construct()  # the defaults, not the environment's: full reasoning


class JudgingRun:
    """Where each passage of a call stands (passages advance independently, so judgments can stream).
    No-think (``none``, adaptive's first step) reads p(true) after a prefilled, closed reasoning: one token.
    Adaptive then reasons on a query's passages scored within ``adaptive_margin`` of ``adaptive_center``,
    and on its ``adaptive_top_k`` best."""

    def __init__(
        self,
        builder: PromptBuilder,
        *,
        positions: Sequence[tuple[int, int]],
        label_token_ids: tuple[int, int],
        max_reasoning_tokens: int,
        effort: Rank1Settings | None = None,
    ) -> None:
        """``positions``: (batch, index in batch) of each passage; ``effort``: how much to reason (None: full)."""
        self._positions = tuple(positions)
        self._builder = builder
        self._labels = label_token_ids
        self._budget = max_reasoning_tokens
        self._effort = effort or _FULL
        self._prompts: dict[int, PreparedPrompt] = {}
        self._outcomes: dict[int, Judgment | Rank1Error] = {}
        self._forced: dict[int, tuple[str, int]] = {}  # awaiting the forced answer: (reasoning, tokens)
        self._probing: set[int] = set()  # passages whose pending request is a no-think one
        self._scores: dict[int, float] = {}  # adaptive: no-think scores awaiting their query's selection
        self._unprobed = Counter(batch for batch, _ in self._positions)  # adaptive: no-think scores still due
        self._due: list[tuple[int, CompletionRequest]] = []
        self._final: list[int] = []

    @property
    def level(self) -> str:
        return self._effort.reasoning_effort

    def begin(self, index: int, prompt: PreparedPrompt | Rank1Error) -> CompletionRequest | None:
        """Passage ``index``'s prompt, or the error that kept it from being built; its first request."""
        if not isinstance(prompt, Rank1Error):
            self._prompts[index] = prompt
            if self.level == "full":
                return self._reasoning_request(index)
            try:
                token_ids = self._builder.build_no_think(prompt, self._effort.no_think_prefill)
            except BackendError as err:  # e.g. the server's tokenizer failed: this passage only
                prompt = err
            else:
                self._probing.add(index)
                return CompletionRequest(token_ids, 1, (), self._labels)
        self._settle(index, prompt)
        self._probed(index)
        return None

    def take(self, index: int, result: CompletionResult) -> CompletionRequest | None:
        """The result of passage ``index``'s last request; its forced-answer request when one is needed."""
        if index in self._outcomes or index not in self._prompts:
            raise BackendError(f"a result came for passage {index}, which awaits none")
        forced = self._forced.pop(index, None)
        probing = index in self._probing
        self._probing.discard(index)
        if isinstance(result, Rank1Error):
            self._settle(index, result)
        elif probing:
            score = _label_score(result, "for no-think")
            if self.level == "adaptive" and isinstance(score, float):
                self._scores[index] = score
            else:
                self._settle(index, self._judged(index, score, reasoned=False))
        elif forced is not None:
            score = _label_score(result, "for the forced answer")
            self._settle(index, self._judged(index, score, forced[0], forced=True, tokens=forced[1]))
        else:
            label = result.token_ids[-1] if result.token_ids else None
            if not (result.finish_reason == "stop" and isinstance(result.stop_reason, str) and label in self._labels):
                return self._forced_request(index, result)
            score = _label_score(result, "at the answer position")
            relevant, tokens = label == self._labels[0], len(result.token_ids)
            self._settle(index, self._judged(index, score, result.text.strip(), relevant=relevant, tokens=tokens))
        if probing:
            self._probed(index)
        return None

    def drain(self) -> tuple[list[tuple[int, CompletionRequest]], list[int]]:
        """The requests released for other passages, and the passages that became final, since the last drain."""
        due, final = self._due, self._final
        self._due, self._final = [], []
        return due, final

    def outcome(self, index: int) -> Judgment | Rank1Error | None:
        """Passage ``index``'s judgment, or the error that kept it from one; None while it is pending."""
        return self._outcomes.get(index)

    def outcomes(self) -> list[Judgment | Rank1Error]:
        """Every passage's judgment, or the error that kept it from one, in input order."""
        return [self._outcomes.get(index, ModelOutputError("no result")) for index in range(len(self._positions))]

    def _settle(self, index: int, outcome: Judgment | Rank1Error) -> None:
        self._outcomes[index] = outcome
        self._final.append(index)

    def _reasoning_request(self, index: int) -> CompletionRequest:
        return CompletionRequest(self._prompts[index].token_ids, self._budget, STOP_STRINGS, self._labels)

    def _probed(self, index: int) -> None:
        """Adaptive: once a query's no-think scores are all in, reason where it can change the outcome."""
        if self.level != "adaptive":
            return
        batch = self._positions[index][0]
        self._unprobed[batch] -= 1
        if self._unprobed[batch]:
            return
        scores = {i: self._scores.pop(i) for i in list(self._scores) if self._positions[i][0] == batch}
        margin, center, top_k = self._effort.adaptive_margin, self._effort.adaptive_center, self._effort.adaptive_top_k
        chosen = {i for i, score in scores.items() if abs(score - center) <= margin}
        chosen.update(sorted(scores, key=lambda i: -scores[i])[: top_k or 0])
        for i, score in scores.items():
            if i in chosen:
                self._due.append((i, self._reasoning_request(i)))
            else:
                self._settle(i, self._judged(i, score, reasoned=False))

    def _judged(
        self,
        index: int,
        score: float | Rank1Error,
        reasoning: str = "",
        *,
        relevant: bool | None = None,
        forced: bool = False,
        tokens: int = 0,
        reasoned: bool = True,
    ) -> Judgment | Rank1Error:
        """The judgment of passage ``index`` (relevant: the generated label, else the likelier one)."""
        if isinstance(score, Rank1Error):
            return score
        return Judgment(
            index=self._positions[index][1],
            score=score,
            relevant=score > 0.5 if relevant is None else relevant,
            reasoning=reasoning,
            forced=forced,
            reasoning_tokens=tokens,
            truncated=self._prompts[index].truncated,
            reasoning_effort=self.level,
            reasoned=reasoned,
        )

    def _forced_request(self, index: int, completion: Completion) -> CompletionRequest | None:
        try:
            forced = self._builder.build_forced(self._prompts[index], completion.token_ids, completion.text)
        except Rank1Error as err:  # e.g. the server's tokenizer failed, or no room: this passage only
            self._settle(index, err)
            return None
        self._forced[index] = (forced.reasoning, len(completion.token_ids))
        return CompletionRequest(forced.token_ids, 1, (), self._labels)


def _label_score(completion: Completion, where: str) -> float | ModelOutputError:
    """p(true) from the two label log-probabilities, or why they cannot be one: NaN, an infinity or a
    positive value is a broken answer (it would become a NaN or saturated score, be cached, upset rankings)."""
    logprobs = completion.final_label_logprobs
    if logprobs is None:
        return ModelOutputError(f"the backend returned no label log-probabilities {where}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and -math.inf < v <= 0.0 for v in logprobs):
        shown = ", ".join(repr(value) for value in logprobs)
        return ModelOutputError(f"the backend returned invalid label log-probabilities {where}: ({shown})")
    return label_probability(*logprobs)
