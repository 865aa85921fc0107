"""One judging call, before and after the engine (pure logic): validation, cache look-up, the
:class:`JudgingRun` for what the cache does not know, and the answers in the caller's order."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rank1_integrations.cache import JudgmentCache
from rank1_integrations.core.judging import FailurePolicy, JudgingRun
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PreparedPrompt, PromptBuilder
from rank1_integrations.errors import BackendError, InvalidInputError, PassageFailure, PassagesFailedError, Rank1Error
from rank1_integrations.settings import Rank1Settings

__all__ = ["CallPlan", "plan_call", "validated"]

Position = tuple[int, int]  # (which (query, passages) pair, index of the passage in it)
KeyFor = Callable[[str, str, str], str]  # the cache key of (query, passage) judged at an effort (full, none, adaptive)


@dataclass
class CallPlan:
    """What one call must ask the engine, and how to answer the caller afterwards."""

    sizes: list[int]
    run: JudgingRun
    fresh: list[Position]  # what the cache does not know, in ``run``'s numbering
    texts: list[tuple[str, str]]  # (query, passage) of each fresh passage
    builder: PromptBuilder
    known: dict[Position, Judgment] = field(default_factory=dict)
    key_for: KeyFor | None = None  # None: no cache
    effort: str = "full"
    lenient: bool = False  # invalid input (a query too long for the context) fails only its passages
    prompts: dict[int, PreparedPrompt | Rank1Error] = field(default_factory=dict)  # built ahead; else by the driver

    def build(self, index: int) -> PreparedPrompt | Rank1Error:
        """Fresh passage ``index``'s prompt, or the backend error (e.g. its tokenizer server failed) that kept
        it from one. Bad input (a query too long for the context) fails the whole call (raises) unless lenient."""
        try:
            return self.builder.build(*self.texts[index])
        except BackendError as err:
            return err
        except InvalidInputError as err:
            if not self.lenient:
                raise
            return err

    def build_all(self) -> CallPlan:
        self.prompts = {index: self.build(index) for index in range(len(self.fresh))}
        return self

    def store_key(self, index: int, judgment: Judgment) -> str | None:
        """Where fresh passage ``index``'s judgment is cached: under how it was made, so that adaptive's
        reasoned judgments serve full calls and its unreasoned ones no-think calls (None: not cached)."""
        if self.key_for is None or not judgment.judged:
            return None
        if self.effort == "adaptive" and not judgment.reasoned and judgment.truncated:
            return None  # cut to leave the budget's room: not what a no-think call would judge
        return self.key_for(*self.texts[index], "full" if judgment.reasoned else "none")

    def handed_over(self, index: int, on_failure: FailurePolicy) -> Judgment | None:
        """What the caller gets for fresh passage ``index``, now final (None: a failure, raised at the end)."""
        outcome = self.run.outcome(index)
        if isinstance(outcome, Judgment):
            return outcome
        if outcome is not None and on_failure == "mark_unjudged":
            return _unjudged(self.fresh[index][1], outcome, self.effort)
        return None

    def finish(self, on_failure: FailurePolicy) -> list[list[Judgment]]:
        """Every passage's judgment in the caller's order, or :class:`PassagesFailedError` carrying them."""
        outcomes = dict(zip(self.fresh, self.run.outcomes(), strict=True))
        found = {**self.known, **{pos: o for pos, o in outcomes.items() if isinstance(o, Judgment)}}
        failed = {pos: o for pos, o in outcomes.items() if isinstance(o, Rank1Error)}
        if failed and on_failure == "raise":
            failures = [PassageFailure(i, error, batch=b) for (b, i), error in sorted(failed.items())]
            batches = [[found.get((b, i)) for i in range(size)] for b, size in enumerate(self.sizes)]
            raise PassagesFailedError(failures, total=sum(self.sizes), batches=batches)
        found.update({pos: _unjudged(pos[1], error, self.effort) for pos, error in failed.items()})
        return [[found[(b, i)] for i in range(size)] for b, size in enumerate(self.sizes)]


def _unjudged(index: int, error: Rank1Error, effort: str) -> Judgment:
    message = f"{type(error).__name__}: {error}"
    return Judgment(index, None, None, "", error=message, reasoning_effort=effort, reasoned=False)


def plan_call(
    batches: Sequence[tuple[str, Sequence[str]]],
    builder: PromptBuilder,
    *,
    label_token_ids: tuple[int, int],
    settings: Rank1Settings,
    cache: JudgmentCache | None,
    key_for: KeyFor,
    lenient: bool = False,
) -> CallPlan:
    """The call's plan. Adaptive reads no cache (its selection needs every no-think score of a query); full and
    no-think read judgments of their own kind. ``lenient``: invalid input comes back unjudged, not raised."""
    invalid: dict[Position, InvalidInputError] = {}
    checked = validated(batches, invalid if lenient else None)
    effort = settings.reasoning_effort
    known = {pos: _unjudged(pos[1], error, effort) for pos, error in invalid.items()}
    positions = [(b, i) for b, (_, ps) in enumerate(checked) for i in range(len(ps)) if (b, i) not in known]
    text = {(b, i): (checked[b][0], checked[b][1][i]) for b, i in positions}
    if cache is not None and positions and effort != "adaptive":
        keys = {pos: key_for(*text[pos], effort) for pos in positions}
        hits = cache.get_many(list(dict.fromkeys(keys.values())))
        known |= {
            pos: dataclasses.replace(hits[key], index=pos[1], reasoning_effort=effort)
            for pos, key in keys.items()
            if key in hits
        }
    fresh = [pos for pos in positions if pos not in known]
    run = JudgingRun(
        builder,
        positions=fresh,
        label_token_ids=label_token_ids,
        max_reasoning_tokens=settings.max_reasoning_tokens,
        effort=settings,
    )
    texts = [text[pos] for pos in fresh]
    stored = key_for if cache is not None else None
    return CallPlan([len(p) for _, p in checked], run, fresh, texts, builder, known, stored, effort, lenient)


def validated(
    batches: Sequence[tuple[str, Sequence[str]]], invalid: dict[Position, InvalidInputError] | None = None
) -> list[tuple[str, Sequence[str]]]:
    """The caller's (query, passages) pairs, or a typed error naming what is wrong. Given ``invalid``, a
    passage rank1 cannot take as input (empty, not valid Unicode; every one of a bad query) goes there instead."""
    if isinstance(batches, str | bytes) or not isinstance(batches, Sequence):
        raise InvalidInputError("judge_many takes a sequence of (query, passages) pairs")
    checked: list[tuple[str, Sequence[str]]] = []
    for number, batch in enumerate(batches):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise InvalidInputError(f"batch {number} must be a (query, passages) pair")
        query, passages = batch
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        bad_query = _problem(query, _QUERY_PROBLEMS)
        if bad_query is not None and invalid is None:
            raise InvalidInputError(bad_query)
        if isinstance(passages, str | bytes) or not isinstance(passages, Sequence):
            raise InvalidInputError(f"passages must be a sequence of strings, got {type(passages).__name__}")
        problems = {i: problem for i, p in enumerate(passages) if (problem := _problem(p, _PASSAGE_PROBLEMS))}
        if invalid is not None:
            for i in range(len(passages)) if bad_query else problems:
                invalid[(number, i)] = InvalidInputError(bad_query or f"passages at indices [{i}] {problems[i]}")
        else:
            for kind in _PASSAGE_PROBLEMS:
                if found := [i for i, problem in problems.items() if problem == kind]:
                    raise InvalidInputError(f"passages at indices {found[:20]} {kind}")
        checked.append((query, passages))
    return checked


_PASSAGE_PROBLEMS = ("are not strings", "are empty", "are not valid Unicode text (they hold lone surrogates)")
_QUERY_PROBLEMS = ("", "query is empty", "query is not valid Unicode text (it holds a lone surrogate)")  # a str by then
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate (e.g. from a bad decode) is no valid Unicode text: it cannot be encoded."""


def _problem(text: object, problems: tuple[str, str, str]) -> str | None:
    """What keeps ``text`` from being rank1's input (not a string, empty, not valid Unicode), or None."""
    if not isinstance(text, str):
        return problems[0]
    if not text.strip():
        return problems[1]
    return problems[2] if _SURROGATE.search(text) else None
