"""Resumable batch reranking of whole runs: ``rank1 run`` and :func:`rerank_run`.

A TREC run plus BEIR ``corpus.jsonl``/``queries.jsonl`` (or ``irds:`` ids) in; the
reranked TREC run and one JSONL line of rank1's judgment per pair out. The JSONL is the
checkpoint: a run started again after any interruption judges only what it lacks.
Engines: a reranker, ``Rank1Settings`` (an embedded engine or vLLM servers), or Ray Data actors.
See ``docs/batch.md``. Importing this package imports neither vLLM nor Ray.
"""

from rank1_integrations.batch.errors import CheckpointError, IncompleteRunError, StorageError
from rank1_integrations.batch.outputs import DEFAULT_MEASURES
from rank1_integrations.batch.ray_engine import RayEngine
from rank1_integrations.batch.runner import Engine, RerankedRun, RunSummary, rerank_run

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
