"""An independent reference for rank1 scores: a plain transformers forward pass in float64.

It tokenizes whole strings the way the rank1 authors do and shares no code with
the package under test.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

PROMPT = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\nPassage: {passage}\n<think>"
)


@lru_cache(maxsize=4)
def _load(model_dir: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    model.eval()
    return tokenizer, model


def label_probability(model_dir: Path, text: str) -> float:
    """p(" true") over " true" + " false" at the position after ``text``."""
    import torch

    tokenizer, model = _load(str(model_dir))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    true_id = tokenizer(" true", add_special_tokens=False)["input_ids"]
    false_id = tokenizer(" false", add_special_tokens=False)["input_ids"]
    assert len(true_id) == len(false_id) == 1
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    pair = torch.stack([logits[true_id[0]], logits[false_id[0]]]).softmax(dim=0)
    return float(pair[0])


def natural_score(model_dir: Path, query: str, passage: str, reasoning: str) -> float:
    return label_probability(model_dir, PROMPT.format(query=query, passage=passage) + reasoning + "</think>")


def forced_score(model_dir: Path, query: str, passage: str, trimmed_reasoning: str) -> float:
    prompt = PROMPT.format(query=query, passage=passage)
    return label_probability(model_dir, f"{prompt}\n{trimmed_reasoning}\n</think>")
