"""Offline test helpers: tiny rank1-style models that build in seconds without a hub.

Importing this package is cheap; torch, transformers and tokenizers are only imported
when a model or tokenizer is actually built.
"""

from tests.models.building import MARKER_FILE
from tests.models.tiny_models import (
    BUILDER_VERSION,
    DEFAULT_SCRIPT,
    END_THINK_TOKEN,
    EOS_TOKEN,
    FALSE_LABEL,
    FORCED_CONFIDENCE,
    JOIN_PASSAGE,
    JOIN_QUERY,
    LABEL_CONFIDENCE,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    OPEN_REASONING,
    RANK1_PROMPT_PREFIX,
    SORTED_PASSAGE,
    THINK_TOKEN,
    TINY_QWEN2,
    TRUE_LABEL,
    ScriptedJudgment,
    build_random_model,
    build_scripted_model,
    build_tokenizer,
    rank1_prompt,
)

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_SCRIPT",
    "END_THINK_TOKEN",
    "EOS_TOKEN",
    "FALSE_LABEL",
    "FORCED_CONFIDENCE",
    "JOIN_PASSAGE",
    "JOIN_QUERY",
    "LABEL_CONFIDENCE",
    "LEN_PASSAGE",
    "LEN_QUERY",
    "MARKER_FILE",
    "OPEN_PASSAGE",
    "OPEN_REASONING",
    "RANK1_PROMPT_PREFIX",
    "SORTED_PASSAGE",
    "THINK_TOKEN",
    "TINY_QWEN2",
    "TRUE_LABEL",
    "ScriptedJudgment",
    "build_random_model",
    "build_scripted_model",
    "build_tokenizer",
    "rank1_prompt",
]
