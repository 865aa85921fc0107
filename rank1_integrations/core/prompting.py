"""rank1 prompts as token ids: template, passage truncation, the forced answer's ``prompt + "\\n" + reasoning +
"\\n</think>"``, in which only the control tokens the model generated stay control tokens (:func:`control_spans`),
never a special-token string it wrote as characters (a passage's ``<think>`` quoted back, data in the prompt)."""

from __future__ import annotations

import bisect
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rank1_integrations.core.protocol import (
    PROMPT_HEAD,
    PROMPT_MIDDLE,
    PROMPT_TAIL,
    QUERY_MARKER,
    SENTENCE_ENDS,
    THINK_CLOSE,
    THINK_OPEN,
    reasoning_for_forced_answer,
)
from rank1_integrations.core.tokenization import (
    Control,
    Data,
    PromptPiece,
    PromptTokenizer,
    Trusted,
    encode_prompt,
    protected_pattern,
)
from rank1_integrations.errors import InvalidInputError, ModelOutputError

logger = logging.getLogger("rank1_integrations")


@dataclass(frozen=True)
class PreparedPrompt:
    """One (query, passage) prompt: its pieces, its token ids, whether the passage was cut."""

    pieces: tuple[PromptPiece, ...]
    token_ids: tuple[int, ...]
    truncated: bool
    passage_tokens_dropped: int = 0
    """How many tokens shorter the prompt is than with the whole passage (0 when not cut)."""

    @property
    def text(self) -> str:
        """The prompt as text, byte for byte what rank1's authors would send."""
        return "".join(piece.marker if isinstance(piece, Control) else piece.text for piece in self.pieces)


@dataclass(frozen=True)
class ForcedPrompt:
    """The forced-answer prompt: ``prompt + "\\n" + reasoning + "\\n</think>"`` as token ids."""

    token_ids: tuple[int, ...]
    reasoning: str
    """The generated text trimmed as the authors do, cut further only where it would not fit the context."""


class PromptBuilder:
    """Builds rank1 prompts that fit ``max_prompt_tokens``, cutting only the passage, and forced-answer
    prompts that fit ``context_size`` with their answer token (None: no limit on them)."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        *,
        template: str | None,
        max_prompt_tokens: int,
        context_size: int | None = None,
    ) -> None:
        if max_prompt_tokens <= 0:
            raise InvalidInputError(
                "the reasoning budget leaves no room for a prompt in the context window; "
                "lower max_reasoning_tokens or raise context_size"
            )
        self._tokenizer = tokenizer
        self._template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.context_size = context_size
        self._think_open_id = tokenizer.single_token_id(THINK_OPEN)

    def build(self, query: str, passage: str) -> PreparedPrompt:
        pieces = self._pieces(query, passage)
        token_ids = encode_prompt(self._tokenizer, pieces)
        if len(token_ids) <= self.max_prompt_tokens:
            return PreparedPrompt(pieces, tuple(token_ids), truncated=False)
        return self._truncated(query, passage, len(token_ids))

    def build_forced(self, prompt: PreparedPrompt, generated_ids: Sequence[int], generated_text: str) -> ForcedPrompt:
        """The authors' forced prompt from the generated ids and the engine's text of them (trimmed as they do).
        Re-tokenized text can outgrow its tokens (a cut character decodes to U+FFFD): then the longest prefix that
        fits ``context_size`` with the answer, ending a sentence where one fits (none: :class:`ModelOutputError`)."""
        reasoning = reasoning_for_forced_answer(generated_text)
        start = len(generated_text) - len(generated_text.lstrip())
        spans = control_spans(self._tokenizer, generated_ids, generated_text)

        def ids_for(length: int) -> tuple[int, ...]:
            return self._forced_ids(prompt, reasoning_pieces(generated_text, spans, start, start + length))

        token_ids = ids_for(len(reasoning))
        if self.context_size is None or len(token_ids) < self.context_size:
            return ForcedPrompt(token_ids, reasoning)
        limit = self.context_size - 1  # the answer is read at the next position
        built: dict[int, tuple[int, ...]] = {}

        def fits(length: int) -> bool:
            built[length] = ids_for(length)
            return len(built[length]) <= limit

        ends = [i + 1 for i, char in enumerate(reasoning) if char in SENTENCE_ENDS]
        cut = _longest(ends, fits) or _longest(range(len(reasoning)), fits)  # a sentence end is never at 0
        if cut is None:
            raise ModelOutputError(
                f"the forced answer's markers alone do not fit in the context ({limit} tokens before the answer)"
            )
        return ForcedPrompt(built[cut], reasoning[:cut])

    def build_no_think(self, prompt: PreparedPrompt, prefill: str) -> tuple[int, ...]:
        """No-think's prompt (arXiv 2504.09858): the forced answer's, with the prefill (data) as the reasoning."""
        token_ids = self._forced_ids(prompt, (Data(prefill),))
        if self.context_size is not None and len(token_ids) >= self.context_size:
            raise InvalidInputError(
                f"no_think_prefill: the no-think prompt takes {len(token_ids)} tokens, more than the "
                f"{self.context_size - 1} that fit before the answer; raise max_reasoning_tokens or shorten the prefill"
            )
        return token_ids

    def no_think_room(self, prefill: str) -> int:
        """The tokens no-think adds to a prompt, its answer included (exact wherever the forced prompt
        extends the prompt's own ids, as on every byte-level BPE tokenizer rank1 uses)."""
        pieces = self._pieces("", "")
        bare = PreparedPrompt(pieces, tuple(encode_prompt(self._tokenizer, pieces)), truncated=False)
        return len(self._forced_ids(bare, (Data(prefill),))) - len(bare.token_ids) + 1

    def _forced_ids(self, prompt: PreparedPrompt, reasoning: Sequence[PromptPiece]) -> tuple[int, ...]:
        continuation = (Trusted("\n"), *reasoning, Trusted("\n"), Control(THINK_CLOSE))
        prompt_ids = prompt.token_ids
        if self._think_open_id is not None and prompt_ids[-1:] == (self._think_open_id,):
            # <think> is one token, so no merge crosses it: only the continuation needs encoding.
            return prompt_ids + tuple(encode_prompt(self._tokenizer, continuation, leading=False))
        think_ids = _think_text_ids(self._tokenizer)
        if think_ids and prompt_ids[-len(think_ids) :] == think_ids:
            # The tokenizer starts a new token at "<think>" whatever precedes it: encode from there.
            tail = encode_prompt(self._tokenizer, (Trusted(THINK_OPEN), *continuation), leading=False)
            return prompt_ids[: -len(think_ids)] + tuple(tail)
        return tuple(encode_prompt(self._tokenizer, (*prompt.pieces, *continuation)))

    def _pieces(self, query: str, passage: str) -> tuple[PromptPiece, ...]:
        pieces: list[PromptPiece] = [Trusted(PROMPT_HEAD)]
        for position, text in enumerate((self._template or QUERY_MARKER).split(QUERY_MARKER)):
            if position:
                pieces.append(Data(query))
            if text:
                pieces.append(Trusted(text))
        return (*pieces, Trusted(PROMPT_MIDDLE), Data(passage), Trusted(PROMPT_TAIL), Control(THINK_OPEN))

    def _truncated(self, query: str, passage: str, whole_length: int) -> PreparedPrompt:
        overhead = len(encode_prompt(self._tokenizer, self._pieces(query, "")))
        if overhead >= self.max_prompt_tokens:
            raise InvalidInputError(
                f"the query and instructions alone take {overhead} tokens, but only "
                f"{self.max_prompt_tokens} fit before the reasoning budget; shorten the query or "
                "raise context_size / lower max_reasoning_tokens"
            )
        passage_ids = encode_prompt(self._tokenizer, [Data(passage)], leading=False)  # a BOS is no part of it
        keep = self.max_prompt_tokens - overhead
        while True:
            pieces = self._pieces(query, _passage_prefix(self._tokenizer, passage, passage_ids[: max(keep, 0)]))
            token_ids = encode_prompt(self._tokenizer, pieces)
            excess = len(token_ids) - self.max_prompt_tokens
            if excess <= 0:
                return PreparedPrompt(
                    pieces, tuple(token_ids), truncated=True, passage_tokens_dropped=whole_length - len(token_ids)
                )
            # The cut text can merge differently in context: shave and retry (nothing kept: the overhead fits).
            keep -= excess


def _passage_prefix(tokenizer: PromptTokenizer, passage: str, token_ids: Sequence[int]) -> str:
    """The passage's text up to ``token_ids``, in whole characters: always a prefix of ``passage``."""
    text = tokenizer.decode(token_ids).rstrip("\ufffd")  # a cut inside a UTF-8 sequence
    if passage.startswith(text):
        return text
    # A decoder that changes the text (a server's clean-up of spaces): keep what it agrees on.
    agreed = next((i for i, (a, b) in enumerate(zip(passage, text, strict=False)) if a != b), len(text))
    return passage[: min(agreed, len(passage))]


def _longest(lengths: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending ``lengths`` that ``fits`` (binary search: fewer tokens for less text)."""
    count = bisect.bisect_left(lengths, True, key=lambda length: not fits(length))
    return lengths[count - 1] if count else None


# Texts before and after "<think>" where a tokenizer must start a new token at "<think>" for _think_text_ids.
_TAIL_PROBES = (
    "Passage: plain words\n",
    "Passage: ends with a stop.\n",
    "Passage: trailing spaces  \n",
    "Passage:\n\n",
    "Passage: 日本語 café\n",
    "Passage: 🙂?!\n",
    "Passage: 42\n",
    "\n",
)
_CONTINUATION_PROBES = ("", "\n", "\nThe", "\n\nSo", "\n. x", "\n>", "\n 日本", "\n</think>")
_THINK_TEXT_IDS: weakref.WeakKeyDictionary[PromptTokenizer, tuple[int, ...] | None] = weakref.WeakKeyDictionary()


def _think_text_ids(tokenizer: PromptTokenizer) -> tuple[int, ...] | None:
    """The ids of "<think>" as text where the tokenizer starts a token there whatever follows (as byte-level BPE
    tokenizers never merge across "\\n<"; the probes check it once per tokenizer); else None."""
    if tokenizer in _THINK_TEXT_IDS:
        return _THINK_TEXT_IDS[tokenizer]
    think_ids = tuple(tokenizer.encode_plain(THINK_OPEN))

    def splits(before: str) -> bool:
        prompt = tuple(tokenizer.encode_plain(before + THINK_OPEN))
        return prompt[-len(think_ids) :] == think_ids and all(
            tokenizer.encode_plain(before + THINK_OPEN + after)
            == [*prompt[: -len(think_ids)], *tokenizer.encode_plain(THINK_OPEN + after)]
            for after in _CONTINUATION_PROBES
        )

    _THINK_TEXT_IDS[tokenizer] = think_ids if all(splits(before) for before in _TAIL_PROBES) else None
    return _THINK_TEXT_IDS[tokenizer]


Span = tuple[int, int]


def control_spans(tokenizer: PromptTokenizer, token_ids: Sequence[int], text: str) -> list[Span]:
    """Where ``text`` (the engine's text of ``token_ids``) holds tokens the model generated as control tokens:
    its special-token strings matched in order to the generated control ids (each run of ordinary ids decoded
    only to count the strings it spelled). If they disagree: none, all data."""
    pattern = protected_pattern(tuple(tokenizer.protected_strings))
    found = list(pattern.finditer(text)) if pattern is not None else []
    if pattern is None or not found:
        return []
    controls = tokenizer.control_tokens
    spans: list[Span] = []
    position = run_start = 0
    for index, token_id in enumerate(token_ids):
        marker = controls.get(token_id)
        if marker is None:
            continue
        if index > run_start:
            position += len(pattern.findall(tokenizer.decode(token_ids[run_start:index])))
        run_start = index + 1
        if position >= len(found):
            break  # the rest was generated past the text (an EOS, a stop string)
        match = found[position]
        if match.group() != marker:
            logger.warning(
                "the generated token ids do not account for the special-token strings in the engine's text; "
                "the forced answer's reasoning is encoded as plain text"
            )
            return []
        spans.append(match.span())
        position += 1
    return spans


def reasoning_pieces(text: str, spans: Sequence[Span], start: int, end: int) -> list[PromptPiece]:
    """``text[start:end]`` as pieces: the whole control ``spans`` inside it as control tokens, the rest as data."""
    pieces: list[PromptPiece] = []
    cursor = start
    for span_start, span_end in spans:
        if span_start < cursor or span_end > end:
            continue
        if span_start > cursor:
            pieces.append(Data(text[cursor:span_start]))
        pieces.append(Control(text[span_start:span_end]))
        cursor = span_end
    if cursor < end:
        pieces.append(Data(text[cursor:end]))
    return pieces
