"""The reasoning of a forced answer as prompt pieces, told apart by what the model generated.

The authors build the forced prompt as text, ``prompt + "\\n" + reasoning + "\\n</think>"``,
and re-tokenize it with special-token strings parsed. A control token the model generated
(``<think>``, ``</think>``, EOS) thus stays a control token, as it should; but so would a
special-token string the model wrote as ordinary characters (a passage's ``<think>``
quoted back, which was data in the prompt). The generated token ids tell the two apart:
the pieces here keep each as the model produced it, and everything else is text that
:func:`~rank1_integrations.core.tokenization.encode_prompt` tokenizes as the authors' code does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rank1_integrations.core.tokenization import Control, Data, PromptPiece, PromptTokenizer, protected_pattern

__all__ = ["control_spans", "reasoning_pieces"]

logger = logging.getLogger("rank1_integrations")

Span = tuple[int, int]


def control_spans(tokenizer: PromptTokenizer, token_ids: Sequence[int], text: str) -> list[Span]:
    """Where ``text`` (the engine's text of ``token_ids``) holds tokens the model generated as control tokens.

    Returns ``(start, end)`` character spans. Special-token strings in the text are matched
    in order to the generated ids: each run of ordinary tokens is decoded only to count
    the special-token strings it spelled as characters (a count that clean-up of spaces
    or a cut-off character at a run's edge cannot change), and the next string must be
    the next control token's. Text that holds no special-token string costs nothing.
    When the two do not agree (a tokenizer whose text is not the engine's), no span is
    returned: the reasoning is then all data, so nothing can become a control token
    that the model might not have generated.
    """
    pattern = protected_pattern(tuple(tokenizer.protected_strings))
    if pattern is None:
        return []
    found = list(pattern.finditer(text))
    if not found:
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
    """``text[start:end]`` as pieces: the control ``spans`` inside it as control tokens, the rest as data.

    A span cut by ``start``/``end`` stays data: only whole control tokens are kept.
    """
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
