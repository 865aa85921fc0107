"""rank1 prompts as token ids: template, truncation of the passage, the forced-answer prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rank1_integrations.errors import InvalidInputError
from rank1_integrations.protocol import (
    PROMPT_HEAD,
    PROMPT_MIDDLE,
    PROMPT_TAIL,
    QUERY_MARKER,
    THINK_CLOSE,
    THINK_OPEN,
)
from rank1_integrations.tokenization import (
    Control,
    Data,
    PromptPiece,
    PromptTokenizer,
    Trusted,
    encode_prompt,
)

__all__ = ["PreparedPrompt", "PromptBuilder"]

# Tokens kept free beyond the reasoning budget for the forced answer's "\n" ... "\n</think>"
# and the label; re-tokenizing the reasoning text can also cost a token or two more
# than the engine generated.
FORCED_ANSWER_MARGIN = 16
_MAX_TRUNCATION_ROUNDS = 8


@dataclass(frozen=True)
class PreparedPrompt:
    """One (query, passage) prompt: its pieces, its token ids, whether the passage was cut."""

    pieces: tuple[PromptPiece, ...]
    token_ids: tuple[int, ...]
    truncated: bool
    passage_tokens_dropped: int = 0

    @property
    def text(self) -> str:
        """The prompt as text, byte for byte what rank1's authors would send."""
        return "".join(piece.marker if isinstance(piece, Control) else piece.text for piece in self.pieces)


class PromptBuilder:
    """Builds rank1 prompts that fit ``max_prompt_tokens``, cutting only the passage."""

    def __init__(self, tokenizer: PromptTokenizer, *, template: str | None, max_prompt_tokens: int) -> None:
        if max_prompt_tokens <= 0:
            raise InvalidInputError(
                "the reasoning budget leaves no room for a prompt in the context window; "
                "lower max_reasoning_tokens or raise context_size"
            )
        self._tokenizer = tokenizer
        self._template = template
        self.max_prompt_tokens = max_prompt_tokens
        self._think_open_id = tokenizer.single_token_id(THINK_OPEN)

    def build(self, query: str, passage: str) -> PreparedPrompt:
        pieces = self._pieces(query, passage)
        token_ids = encode_prompt(self._tokenizer, pieces)
        if len(token_ids) <= self.max_prompt_tokens:
            return PreparedPrompt(pieces, tuple(token_ids), truncated=False)
        return self._truncated(query, passage)

    def build_forced(self, prompt: PreparedPrompt, trimmed_reasoning: str) -> tuple[int, ...]:
        """The authors' forced prompt: prompt + "\\n" + reasoning + "\\n</think>", as token ids."""
        continuation = (Trusted("\n"), Data(trimmed_reasoning), Trusted("\n"), Control(THINK_CLOSE))
        if self._think_open_id is not None and prompt.token_ids[-1:] == (self._think_open_id,):
            # <think> is one token, so no merge crosses it: the prompt's ids are an exact
            # prefix, and only the continuation needs encoding.
            return prompt.token_ids + tuple(encode_prompt(self._tokenizer, continuation, leading=False))
        return tuple(encode_prompt(self._tokenizer, (*prompt.pieces, *continuation)))

    def _pieces(self, query: str, passage: str) -> tuple[PromptPiece, ...]:
        return (
            Trusted(PROMPT_HEAD),
            *self._query_pieces(query),
            Trusted(PROMPT_MIDDLE),
            Data(passage),
            Trusted(PROMPT_TAIL),
            Control(THINK_OPEN),
        )

    def _query_pieces(self, query: str) -> list[PromptPiece]:
        if self._template is None:
            return [Data(query)]
        pieces: list[PromptPiece] = []
        for position, text in enumerate(self._template.split(QUERY_MARKER)):
            if position:
                pieces.append(Data(query))
            if text:
                pieces.append(Trusted(text))
        return pieces

    def _truncated(self, query: str, passage: str) -> PreparedPrompt:
        overhead = len(encode_prompt(self._tokenizer, self._pieces(query, "")))
        if overhead >= self.max_prompt_tokens:
            raise InvalidInputError(
                f"the query and instructions alone take {overhead} tokens, but only "
                f"{self.max_prompt_tokens} fit before the reasoning budget; shorten the query or "
                "raise context_size / lower max_reasoning_tokens"
            )
        passage_ids = encode_prompt(self._tokenizer, [Data(passage)])
        keep = self.max_prompt_tokens - overhead
        for _ in range(_MAX_TRUNCATION_ROUNDS):
            cut = _decode_whole_characters(self._tokenizer, passage_ids[:keep])
            pieces = self._pieces(query, cut)
            token_ids = encode_prompt(self._tokenizer, pieces)
            excess = len(token_ids) - self.max_prompt_tokens
            if excess <= 0:
                return PreparedPrompt(
                    pieces, tuple(token_ids), truncated=True, passage_tokens_dropped=len(passage_ids) - keep
                )
            # Re-tokenizing the cut text in context can merge differently; shave and retry.
            keep = max(0, keep - excess)
        raise InvalidInputError("could not truncate the passage to fit the context window")


def _decode_whole_characters(tokenizer: PromptTokenizer, token_ids: Sequence[int]) -> str:
    """Decoded text without a trailing half character (a cut inside a UTF-8 sequence)."""
    return tokenizer.decode(token_ids).rstrip("\ufffd")
