"""Resumable batch reranking of whole runs (``rank1 run``, :func:`rerank_run`): a TREC run in, the reranked run and
a JSONL of rank1's judgments (the checkpoint) out. See ``docs/batch.md``. Imports neither vLLM nor Ray."""

from rank1_integrations.batch.checkpoint import CheckpointError, StorageError
from rank1_integrations.batch.outputs import DEFAULT_MEASURES
from rank1_integrations.batch.ray_engine import RayEngine
from rank1_integrations.batch.runner import Engine, IncompleteRunError, RerankedRun, RunSummary, rerank_run

__all__ = [
    "DEFAULT_MEASURES",
    "CheckpointError",
    "Engine",
    "IncompleteRunError",
    "RayEngine",
    "RerankedRun",
    "RunSummary",
    "StorageError",
    "rerank_run",
]
