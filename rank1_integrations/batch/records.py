"""A run's line for one (query, passage) pair, with the fingerprint of the settings that judged it and a
digest of the texts: a resumed run keeps only judgments it would have made itself."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import InvalidInputError

if TYPE_CHECKING:
    from rank1_integrations.reranker import Rank1Reranker
    from rank1_integrations.settings import Rank1Settings

__all__ = ["PairRecord", "RunSettings", "effort_of", "text_digest"]


@dataclass(frozen=True)
class RunSettings:
    """The settings a judgment depends on (besides the texts): a checkpoint holds one set only. Unused effort
    fields are left out of :meth:`to_dict`, so full reasoning keeps the fingerprints from before efforts."""

    model: str
    """The backend's model name (the embedded engine's model path or id; a server's served name)."""
    template: str | None
    max_reasoning_tokens: int
    context_size: int
    reasoning_effort: str = "full"
    no_think_prefill: str | None = None
    adaptive_margin: float | None = None
    adaptive_center: float | None = None
    adaptive_top_k: int | None = None

    @classmethod
    def of(cls, reranker: Rank1Reranker) -> RunSettings:
        model, context = reranker.backend.model_name, reranker.context_size
        return cls(model, reranker.template, reranker.max_reasoning_tokens, context, **effort_of(reranker.settings))

    @classmethod
    def from_dict(cls, data: Any) -> RunSettings:
        try:
            settings = cls(**data)
        except TypeError:
            raise ValueError("settings must be a JSON object of run settings") from None
        if not (
            isinstance(settings.model, str)
            and isinstance(settings.template, str | None)
            and _is_int(settings.max_reasoning_tokens)
            and _is_int(settings.context_size)
            and isinstance(settings.reasoning_effort, str)
        ):
            raise ValueError("settings lack model, template, max_reasoning_tokens or context_size")
        return settings

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if name in _ALWAYS or value not in (None, "full")}

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def differences(self, other: RunSettings) -> list[str]:
        """``name: ours != theirs`` for each setting that differs (templates shortened)."""

        def short(value: object) -> str:
            text = repr(value)
            return text if len(text) <= 60 else text[:56] + "...'"

        ours, theirs = asdict(self), asdict(other)
        return [f"{n}: {short(ours[n])} != {short(theirs[n])}" for n in ours if ours[n] != theirs[n]]


_ALWAYS = ("model", "template", "max_reasoning_tokens", "context_size")


def effort_of(settings: Rank1Settings) -> dict[str, Any]:
    """Every effort field of a run: the prefill where no-think runs, adaptive's knobs under ``adaptive``, else None."""
    effort = settings.reasoning_effort
    knobs = ("adaptive_margin", "adaptive_center", "adaptive_top_k")
    found = {name: getattr(settings, name) if effort == "adaptive" else None for name in knobs}
    prefill = settings.no_think_prefill if effort != "full" else None
    return {"reasoning_effort": effort, "no_think_prefill": prefill, **found}


def text_digest(query: str, passage: str) -> str:
    """A short digest of the texts judged: a resumed run refuses a judgment of other texts."""
    data = json.dumps([query, passage], ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class PairRecord:
    """One line of the judgments JSONL: a judged pair, or a failed one with its error."""

    qid: str
    docid: str
    score: float | None
    relevant: bool | None
    forced: bool
    reasoning_tokens: int
    reasoning: str
    truncated: bool
    error: str | None
    settings: str
    """Fingerprint of the :class:`RunSettings` that judged it."""
    text_digest: str
    """:func:`text_digest` of the query and passage judged."""
    invalid: bool = False
    """rank1 refused these texts as input: not attempted again while they stay the same (absent from old lines)."""
    reasoned: bool = True
    """Whether rank1 reasoned (False: a no-think score, or no judgment; absent from old lines)."""

    @property
    def judged(self) -> bool:
        return self.error is None and self.score is not None

    @classmethod
    def of(cls, qid: str, docid: str, judgment: Judgment, *, settings: str, digest: str) -> PairRecord:
        """A judgment's record: an unjudged one is a failure, invalid where rank1 refused its texts as input."""
        j = judgment
        error = None if j.score is not None else j.error or "not judged"
        invalid = (error or "").startswith(f"{InvalidInputError.__name__}:")
        fields = (j.score, j.relevant, j.forced, j.reasoning_tokens, j.reasoning, j.truncated, error)
        return cls(qid, docid, *fields, settings, digest, invalid, j.reasoned)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> PairRecord:
        """Parse one line; ``ValueError`` when it is not a well-formed record."""
        try:
            r = cls(**json.loads(line))
        except TypeError as err:  # also where the line is not a JSON object
            raise ValueError(f"not a judgment record: {err}") from None
        texts = (r.qid, r.docid, r.reasoning, r.settings, r.text_digest)
        if not all(isinstance(t, str) for t in texts) or not r.qid or not r.docid:
            raise ValueError("qid, docid, reasoning, settings and text_digest must be strings")
        if not all(isinstance(flag, bool) for flag in (r.forced, r.truncated, r.invalid, r.reasoned)):
            raise ValueError("forced, truncated, invalid and reasoned must be booleans")
        if r.invalid and r.error is None:
            raise ValueError("an invalid record has an error")
        if not _is_int(r.reasoning_tokens) or r.reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be a non-negative int")
        if r.error is not None:
            if not isinstance(r.error, str) or r.score is not None or r.relevant is not None:
                raise ValueError("a failed record has an error string and neither score nor verdict")
        elif not (
            isinstance(r.score, int | float)
            and not isinstance(r.score, bool)
            and math.isfinite(r.score)
            and 0.0 <= r.score <= 1.0
            and isinstance(r.relevant, bool)
        ):
            raise ValueError("a judged record has a score in [0, 1] and a boolean verdict")
        return r


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
