"""vLLM's OpenAI-compatible wire format, pure: the bodies rank1 sends and how their answers are read.

Log-probabilities are keyed by token id (``"token_id:N"``), never by decoded string; choices are
matched to prompts by index; whatever a server leaves out is a typed error, never a ``KeyError``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard, cast

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.errors import IncompatibleServerError, MalformedResponseError, ModelOutputError, Rank1Error


def _body(model: str, prompts: Sequence[Sequence[int]], max_tokens: int, **more: Any) -> dict[str, Any]:
    # skip_special_tokens: else </think> vanishes from the text and the stop strings never match.
    return {
        "model": model,
        "prompt": [list(p) for p in prompts],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "skip_special_tokens": False,
        "return_tokens_as_token_ids": True,
        "add_special_tokens": False,
        **more,
    }


def completion_body(model: str, requests: Sequence[CompletionRequest], *, label_ids: bool) -> dict[str, Any]:
    first = requests[0]
    # One top log-probability keeps answers small; the labels come from logprob_token_ids, exact
    # at every position whatever the server's --logprobs-mode, and far below --max-logprobs 20.
    body = _body(model, [r.prompt_token_ids for r in requests], first.max_tokens, logprobs=1, return_token_ids=True)
    if first.stop:
        body["stop"] = list(first.stop)
    if label_ids:
        body["logprob_token_ids"] = list(first.label_token_ids)
    return body


def echo_body(model: str, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Prompt log-probabilities of ``prompts`` (each ends in the label to score)."""
    return _body(model, prompts, 1, echo=True, logprobs=0)


def check_completions(body: Any, model: str, server: str) -> None:
    """Raise unless ``body`` is a completions answer for ``model``: malformed is a fault of that
    request, another model's is proof of a misconfigured server."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise MalformedResponseError(
            f"{server} answered /v1/completions without a 'choices' list: is it an OpenAI-compatible server?",
            server=server,
        )
    served = body.get("model")
    if served is not None and served != model:
        raise IncompatibleServerError(
            f"{server} answered for model {str(served)[:200]!r}, not {model!r}", server=server
        )


def only_model(body: Any, server: str) -> str:
    ids = _model_ids(body)
    if len(ids) != 1 or not isinstance(ids[0], str) or not ids[0]:
        raise IncompatibleServerError(
            f"{server} serves {[str(i)[:200] for i in ids][:10]}: pass model= to choose one", server=server
        )
    return ids[0]


def max_model_len_of(body: Any, model: str, server: str) -> int:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise IncompatibleServerError(
            f"{server}/models did not return a model list: is it an OpenAI-compatible vLLM server?", server=server
        )
    entry = next((e for e in body["data"] if isinstance(e, dict) and e.get("id") == model), None)
    if entry is None:
        raise IncompatibleServerError(
            f"{server} serves {[str(i)[:200] for i in _model_ids(body)][:10]}, not {model!r}; pass the served "
            "model name (vLLM's --served-model-name, else its --model argument)",
            server=server,
        )
    length = entry.get("max_model_len")
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise IncompatibleServerError(
            f"{server}/models reports no max_model_len for {model!r}: rank1 needs a vLLM server "
            "(python -m vllm.entrypoints.openai.api_server)",
            server=server,
        )
    return length


def is_token_list(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _model_ids(body: Any) -> list[Any]:
    data = body.get("data") if isinstance(body, dict) else None
    return [e.get("id") for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def parse_completions(body: Mapping[str, Any], requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
    """One result per request from a checked completions answer."""
    found: list[list[Any]] = [[] for _ in requests]
    for choice in body["choices"]:
        index = choice.get("index") if isinstance(choice, dict) else None
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(requests):
            found[index].append(choice)
    return [
        _parse_choice(choices[0], request)
        if len(choices) == 1
        else ModelOutputError(f"the server returned {'several choices' if choices else 'no choice'} for prompt {i}")
        for i, (choices, request) in enumerate(zip(found, requests, strict=True))
    ]


def label_prompts(request: CompletionRequest, completion: Completion) -> list[tuple[int, ...]]:
    """Prompt + generation up to the answer position, then each label, when the labels are wanted there
    (an answer, or a one-token forced answer) but missing; else none."""
    ids = completion.token_ids
    if completion.final_label_logprobs is not None or not ids:
        return []
    if ids[-1] not in request.label_token_ids and request.max_tokens != 1:
        return []
    return [(*request.prompt_token_ids, *ids[:-1], label) for label in request.label_token_ids]


def with_echoed_labels(
    completion: Completion, prompts: Sequence[Sequence[int]], first_index: int, echo: Any
) -> CompletionResult:
    """``completion`` with its label log-probabilities read from an ``echo`` answer (choices from ``first_index``)."""
    if isinstance(echo, Rank1Error):
        return ModelOutputError(
            "the server gave no label log-probabilities and the prompt log-probability fallback failed: "
            f"{type(echo).__name__}: {echo}"
        )
    choices = {c.get("index"): c for c in echo.get("choices", []) if isinstance(c, dict)}
    values = [_echoed_last_logprob(choices.get(first_index + i), prompt) for i, prompt in enumerate(prompts)]
    for value in values:
        if isinstance(value, ModelOutputError):
            return value
    true, false = cast(list[float], values)
    return dataclasses.replace(completion, final_label_logprobs=(true, false))


def _token_id(token: Any) -> int | None:
    number = token.removeprefix("token_id:") if isinstance(token, str) and token.startswith("token_id:") else ""
    return int(number) if number.isascii() and number.isdigit() else None


def _parse_choice(choice: Mapping[str, Any], request: CompletionRequest) -> CompletionResult:
    text = choice.get("text")
    finish_reason = choice.get("finish_reason")
    if not isinstance(text, str) or finish_reason not in ("stop", "length"):
        return ModelOutputError(
            f"the server returned a choice without text or with finish_reason {str(finish_reason)[:50]!r}"
        )
    if "stop_reason" not in choice:
        return ModelOutputError("the server returned no stop_reason: rank1 needs a vLLM server")
    stop_reason = choice["stop_reason"]
    if not (stop_reason is None or isinstance(stop_reason, str | int)):
        return ModelOutputError(f"the server returned an unexpected stop_reason {str(stop_reason)[:50]!r}")
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return ModelOutputError("the server returned no logprobs although they were requested")
    tokens = logprobs.get("tokens")
    top = logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(top, list) or len(tokens) != len(top):
        return ModelOutputError("the server returned malformed logprobs (tokens and top_logprobs differ)")
    token_ids = choice.get("token_ids")
    from_tokens = [_token_id(t) for t in tokens]
    if token_ids is None:
        if any(t is None for t in from_tokens):
            return ModelOutputError("the server returned neither token_ids nor token-id logprob keys")
        token_ids = from_tokens
    if not is_token_list(token_ids):
        return ModelOutputError("the server returned malformed token_ids")
    if len(token_ids) != len(tokens) or any(
        parsed is not None and parsed != actual for parsed, actual in zip(from_tokens, token_ids, strict=True)
    ):
        return ModelOutputError("the server's token_ids do not match its logprobs")
    final = _label_logprobs(top[-1], request.label_token_ids) if top else None
    return Completion(
        token_ids=tuple(token_ids),
        text=text,
        finish_reason=str(finish_reason),
        stop_reason=stop_reason,
        final_label_logprobs=final,
    )


def _label_logprobs(position: Any, labels: tuple[int, int]) -> tuple[float, float] | None:
    items = position.items() if isinstance(position, dict) else ()
    by_id = {_token_id(k): float(v) for k, v in items if isinstance(v, int | float) and not isinstance(v, bool)}
    return (by_id[labels[0]], by_id[labels[1]]) if labels[0] in by_id and labels[1] in by_id else None


def _echoed_last_logprob(choice: Any, prompt: Sequence[int]) -> float | ModelOutputError:
    """Log-probability of a prompt's last token, from an ``echo`` answer."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    position = len(prompt) - 1
    if not isinstance(values, list) or len(values) <= position:
        return ModelOutputError("the server returned no prompt log-probabilities for the label fallback")
    echoed = _token_id(tokens[position]) if isinstance(tokens, list) and len(tokens) > position else None
    if echoed is not None and echoed != prompt[-1]:
        return ModelOutputError("the server's prompt log-probabilities are not aligned with the prompt")
    value = values[position]
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return ModelOutputError("the server returned no log-probability for the label in the fallback")
    return float(value)


def error_detail(body: object) -> str:
    """The server's error message from an ``APIStatusError.body`` (vLLM: ``{"error": {"message": ...}}``)."""
    if isinstance(body, dict):
        body = body.get("error", body)
        body = body.get("message", body) if isinstance(body, dict) else body
    text = body if isinstance(body, str) else "" if body is None else json.dumps(body, default=str)
    return text.strip()[:400] or "(no body)"


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """Seconds from ``Retry-After-Ms`` / ``Retry-After`` (seconds or an HTTP date), capped."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if name != "retry-after":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), cap)
    return None
