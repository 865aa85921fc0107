"""The rank1 protocol as pure text functions (prompt, stop strings, labels, forced answer), following the
rank1 authors' inference code byte for byte; nothing here knows about tokenizers, engines or frameworks."""

from __future__ import annotations

import math

INSTRUCTION = "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'."
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TRUE_LABEL = " true"
FALSE_LABEL = " false"
STOP_STRINGS = (f"{THINK_CLOSE}{TRUE_LABEL}", f"{THINK_CLOSE}{FALSE_LABEL}")
QUERY_MARKER = "FILL_QUERY_HERE"

# HEAD query MIDDLE passage TAIL, then <think>.
PROMPT_HEAD = f"{INSTRUCTION}\nQuery: "
PROMPT_MIDDLE = "\nPassage: "
PROMPT_TAIL = "\n"
SENTENCE_ENDS = (".", "!", "?")


def prompt_body(query: str, passage: str) -> str:
    """The prompt up to, not including, the opening ``<think>`` (which is a control marker)."""
    return f"{PROMPT_HEAD}{query}{PROMPT_MIDDLE}{passage}{PROMPT_TAIL}"


def reasoning_for_forced_answer(generated_text: str) -> str:
    """Cut unfinished reasoning back to its last sentence end, as the authors do (none: kept whole, stripped)."""
    text = generated_text.strip()
    last_end = max(text.rfind(mark) for mark in SENTENCE_ENDS)
    return text[: last_end + 1] if last_end != -1 else text


def label_probability(true_logprob: float, false_logprob: float) -> float:
    """p(true) over true+false, computed stably (also correct when given raw logits)."""
    diff = false_logprob - true_logprob
    if diff >= 0:
        z = math.exp(-diff)
        return z / (1.0 + z)
    return 1.0 / (1.0 + math.exp(diff))
