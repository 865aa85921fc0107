"""Prompt pieces (trusted text, data, control markers) to token ids: runs of text in one call, as the authors'
whole-string tokenization does; a special-token string in *data* one character at a time, never a control token."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class PromptTokenizer(Protocol):
    """What prompt building needs from a tokenizer; backends provide one."""

    @property
    def leading_ids(self) -> Sequence[int]: ...  # put before a prompt (a BOS token), possibly none
    @property
    def protected_strings(self) -> Sequence[str]: ...  # encode to special/added tokens: never from data
    @property
    def control_tokens(self) -> Mapping[int, str]: ...  # the added and special tokens, id -> text
    def encode_plain(self, text: str) -> list[int]: ...  # no special tokens added, no special strings parsed
    def single_token_id(self, text: str) -> int | None: ...  # when ``text`` is exactly one token
    def decode(self, token_ids: Sequence[int]) -> str: ...  # special tokens included; a cut UTF-8 sequence: U+FFFD


@dataclass(frozen=True)
class Trusted:
    """Text the integration itself writes (instructions, the user's template)."""

    text: str


@dataclass(frozen=True)
class Data:
    """Text from outside (query, passage, model output): never becomes a control token."""

    text: str


@dataclass(frozen=True)
class Control:
    """A protocol marker (``<think>``) or a control token the model generated: its token where there is one."""

    marker: str


PromptPiece = Trusted | Data | Control


def encode_prompt(tokenizer: PromptTokenizer, pieces: Sequence[PromptPiece], *, leading: bool = True) -> list[int]:
    """Token ids of the prompt the pieces spell, with data defused; ``leading=False``: without the BOS
    (a continuation of a prompt that ended on a control token, which no merge can cross)."""
    ids = list(tokenizer.leading_ids) if leading else []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            ids.extend(tokenizer.encode_plain("".join(pending)))
            pending.clear()

    protected = protected_pattern(tuple(tokenizer.protected_strings))
    for piece in pieces:
        if isinstance(piece, Control):
            token_id = tokenizer.single_token_id(piece.marker)
            if token_id is None:
                pending.append(piece.marker)
            else:
                flush()
                ids.append(token_id)
        elif isinstance(piece, Data):
            for part, is_protected in split_protected(piece.text, protected):
                if is_protected:
                    flush()
                    for char in part:
                        ids.extend(tokenizer.encode_plain(char))
                else:
                    pending.append(part)
        else:
            pending.append(piece.text)
    flush()
    return ids


@functools.cache
def protected_pattern(strings: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for all ``strings``, longest first, so that "</think>" wins over a shorter token it contains."""
    alternatives = sorted({s for s in strings if s}, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")") if alternatives else None


def split_protected(text: str, pattern: re.Pattern[str] | None) -> list[tuple[str, bool]]:
    """``text`` in runs, each saying whether it is a protected string."""
    parts = pattern.split(text) if pattern is not None else [text]
    return [(part, position % 2 == 1) for position, part in enumerate(parts) if part]


def leading_special_ids(with_specials: Sequence[int], without: Sequence[int]) -> tuple[int, ...]:
    """What a tokenizer puts in front of text (a BOS, part of every prompt as in the authors' text prompts),
    from one text encoded both ways; anything it appends (an EOS) is not."""
    with_specials, without = list(with_specials), list(without)
    for position in range(len(with_specials) - len(without) + 1):
        if with_specials[position : position + len(without)] == without:
            return tuple(with_specials[:position])
    return ()


class HFPromptTokenizer:
    """:class:`PromptTokenizer` over a Hugging Face tokenizer (the one the engine uses)."""

    def __init__(self, hf_tokenizer: Any, *, extra_protected: Sequence[str] = ()) -> None:
        self._tokenizer = hf_tokenizer
        self._fast = _private_fast_encoder(hf_tokenizer)
        self._added: dict[str, int] = dict(hf_tokenizer.get_added_vocab())
        self.control_tokens: Mapping[int, str] = {token_id: text for text, token_id in self._added.items()}
        specials = [s for s in getattr(hf_tokenizer, "all_special_tokens", []) if isinstance(s, str)]
        self.protected_strings: Sequence[str] = tuple(sorted({*self._added, *specials, *extra_protected}))
        self.leading_ids: Sequence[int] = leading_special_ids(
            hf_tokenizer("a", add_special_tokens=True)["input_ids"],
            hf_tokenizer("a", add_special_tokens=False)["input_ids"],
        )

    def encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def single_token_id(self, text: str) -> int | None:
        if text in self._added:
            return self._added[text]
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if len(ids) == 1 else None

    def decode(self, token_ids: Sequence[int]) -> str:
        # The Rust decoder alone where there is one, as vLLM's detokenizer runs it: no clean-up of spaces.
        decoder = self._tokenizer if self._fast is None else self._fast
        return str(decoder.decode(list(token_ids), skip_special_tokens=False))


# Where the private fast encoder must agree with the tokenizer's own call before it is trusted.
_ENCODER_PROBES = (
    "Determine if the following passage is relevant.\nQuery: café?\nPassage:  two  spaces\n\n",
    " leading space, trailing newline\n",
    "Ünïcödé — 日本語 🙂 <think> </think> <|endoftext|>",
)


def _private_fast_encoder(hf_tokenizer: Any) -> Any | None:
    """A private copy of a fast tokenizer's Rust backend that never parses special tokens, or None: it skips
    transformers' per-call Python layer and never toggles the engine's shared tokenizer."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    shared_setting = getattr(backend, "encode_special_tokens", None)
    try:
        encoder = type(backend).from_str(backend.to_str())
        encoder.encode_special_tokens = True
        encoder.no_truncation()
        encoder.no_padding()
        for probe in _ENCODER_PROBES:
            expected = list(hf_tokenizer(probe, add_special_tokens=False, split_special_tokens=True)["input_ids"])
            if list(encoder.encode(probe, add_special_tokens=False).ids) != expected:
                return None
    except Exception:  # any backend this code does not know: keep the tokenizer's own call
        return None
    finally:  # transformers leaves the shared backend as its last call set it
        if shared_setting is not None:
            backend.encode_special_tokens = shared_setting
    return encoder
