"""rank1 reasoning reranker for LangChain and LlamaIndex, on vLLM.

Importing this package imports no heavy library: vLLM, torch, LangChain and
LlamaIndex load only when the feature that needs them is used.
"""

from rank1_integrations.cache import DiskCache, JudgmentCache, MemoryCache
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.templates import DATASET_PROMPTS
from rank1_integrations.errors import (
    BackendError,
    IncompatibleServerError,
    InvalidInputError,
    MalformedResponseError,
    MissingDependencyError,
    ModelOutputError,
    PassageFailure,
    PassagesFailedError,
    Rank1Error,
    ServerConnectionError,
    ServerStatusError,
    ServerTimeoutError,
)
from rank1_integrations.reranker import DEFAULT_MAX_REASONING_TOKENS, Rank1Reranker

__all__ = [
    "DATASET_PROMPTS",
    "DEFAULT_MAX_REASONING_TOKENS",
    "BackendError",
    "DiskCache",
    "IncompatibleServerError",
    "InvalidInputError",
    "Judgment",
    "JudgmentCache",
    "MalformedResponseError",
    "MemoryCache",
    "MissingDependencyError",
    "ModelOutputError",
    "PassageFailure",
    "PassagesFailedError",
    "Rank1Error",
    "Rank1Reranker",
    "ServerConnectionError",
    "ServerStatusError",
    "ServerTimeoutError",
]

__version__ = "0.1.0"
