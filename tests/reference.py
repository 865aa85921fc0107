"""An independent reference for rank1 scores: a plain transformers forward pass in float64.

It tokenizes whole strings the way the rank1 authors do, scores exactly the token ids
it is given, and shares no code with the package under test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

PROMPT = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\nPassage: {passage}\n<think>"
)


@lru_cache(maxsize=1)
def loaded(model_dir: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    model.eval()
    return tokenizer(Path(model_dir)), model


@lru_cache(maxsize=8)
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def release() -> None:
    """Drop the loaded float64 model (a test module that is done with it)."""
    loaded.cache_clear()


def label_ids(model_dir: Path) -> tuple[int, int]:
    tok = tokenizer(Path(model_dir))
    true_id = tok(" true", add_special_tokens=False)["input_ids"]
    false_id = tok(" false", add_special_tokens=False)["input_ids"]
    assert len(true_id) == len(false_id) == 1
    return true_id[0], false_id[0]


def score_of_ids(model_dir: Path, token_ids: Sequence[int]) -> float:
    """p(" true") over " true" + " false" at the position after exactly ``token_ids``."""
    import torch

    _, model = loaded(str(model_dir))
    true_id, false_id = label_ids(model_dir)
    with torch.no_grad():
        logits = model(torch.tensor([list(token_ids)])).logits[0, -1]
    pair = torch.stack([logits[true_id], logits[false_id]]).softmax(dim=0)
    return float(pair[0])


def label_probability(model_dir: Path, text: str) -> float:
    """p(" true") over " true" + " false" at the position after ``text`` (whole-string tokenization)."""
    return score_of_ids(model_dir, tokenizer(Path(model_dir))(text)["input_ids"])


def natural_score(model_dir: Path, query: str, passage: str, reasoning: str) -> float:
    return label_probability(model_dir, PROMPT.format(query=query, passage=passage) + reasoning + "</think>")


def forced_score(model_dir: Path, query: str, passage: str, trimmed_reasoning: str) -> float:
    prompt = PROMPT.format(query=query, passage=passage)
    return label_probability(model_dir, f"{prompt}\n{trimmed_reasoning}\n</think>")


def trimmed(text: str) -> str:
    """The authors' trim: strip, then cut back to the last '.', '!' or '?' (kept whole without one)."""
    text = text.strip()
    last = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
    return text[: last + 1] if last != -1 else text


def generated_control_starts(model_dir: Path, generated_ids: Sequence[int]) -> set[int]:
    """Where, in the decoded text of ``generated_ids``, each token generated as an added/special token starts.

    Found the slow, plain way: decode every prefix that ends with such a token.
    """
    tok = tokenizer(Path(model_dir))
    added = {token_id: text for text, token_id in tok.get_added_vocab().items()}
    starts = set()
    for i, token_id in enumerate(generated_ids):
        if token_id in added:
            end = len(tok.decode(list(generated_ids[: i + 1]), skip_special_tokens=False))
            starts.add(end - len(added[token_id]))
    return starts


def expected_forced_ids(
    model_dir: Path, prompt_text: str, generated_ids: Sequence[int], engine_text: str, reasoning: str
) -> list[int]:
    """The authors' forced prompt ``prompt + "\\n" + reasoning + "\\n</think>"`` as token ids, except that a
    special-token string the model wrote as ordinary characters stays characters (one token per character).

    ``reasoning`` must be the start of ``engine_text.strip()``; the prompt must hold no
    special-token string other than its ``<think>``.
    """
    tok = tokenizer(Path(model_dir))
    lead = len(engine_text) - len(engine_text.lstrip())
    assert engine_text[lead:].startswith(reasoning), (engine_text, reasoning)
    controls = {start - lead for start in generated_control_starts(model_dir, generated_ids)}
    text = f"{prompt_text}\n{reasoning}\n</think>"
    begin = len(prompt_text) + 1  # where the reasoning starts in text
    added = tok.get_added_vocab()
    pattern = re.compile("|".join(re.escape(s) for s in sorted(added, key=len, reverse=True)))
    written = {
        m.start()
        for m in pattern.finditer(text)
        if begin <= m.start() < begin + len(reasoning) and m.start() - begin not in controls
    }
    if not written:
        return list(tok(text)["input_ids"])  # exactly the authors' call
    ids = list(tok("", add_special_tokens=True)["input_ids"])  # BOS, if the tokenizer adds one
    position = 0
    for match in pattern.finditer(text):
        ids += tok(text[position : match.start()], add_special_tokens=False)["input_ids"]
        if match.start() in written:
            for char in match.group():
                ids += tok(char, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        else:
            ids.append(added[match.group()])
        position = match.end()
    return ids + tok(text[position:], add_special_tokens=False)["input_ids"]
