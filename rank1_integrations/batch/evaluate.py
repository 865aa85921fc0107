"""Retrieval metrics of a run against qrels, with ir-measures (pytrec_eval), as the cookbook computes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.batch.inputs import IRDS_PREFIX
from rank1_integrations.errors import InvalidInputError

__all__ = ["DEFAULT_MEASURES", "Evaluation"]

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@10", "R@100")


class Evaluation:
    """Measures of runs against qrels; built before a run starts, so a typo fails at once, not hours later.

    ``qrels`` is a TREC qrels file or ``irds:<dataset id>`` (its qrels through ``ir_datasets``).
    """

    def __init__(self, qrels: str | Path, measures: Sequence[str]) -> None:
        self._ir = require("ir_measures", extras=("eval",), purpose="Evaluating against qrels (--eval)")
        try:
            self._measures = [self._ir.parse_measure(name) for name in measures]
        except Exception as err:  # ir-measures raises several kinds for a name it does not know
            raise InvalidInputError(f"not an ir-measures measure in {list(measures)}: {err}") from None
        if not self._measures:
            raise InvalidInputError("no measures to evaluate")
        self._qrels = qrels
        if isinstance(qrels, str) and qrels.startswith(IRDS_PREFIX):
            self._dataset = require("ir_datasets", extras=("eval",), purpose="Reading ir_datasets qrels").load(
                qrels[len(IRDS_PREFIX) :]
            )
        elif not Path(qrels).is_file():
            raise InvalidInputError(f"qrels file {qrels} does not exist")

    def __call__(self, runs: Mapping[str, Path]) -> dict[str, dict[str, float]]:
        """Each run's aggregate measures: ``{run name: {measure: value}}``."""
        results: dict[str, dict[str, float]] = {}
        for name, run in runs.items():
            values = self._ir.calc_aggregate(self._measures, self._read_qrels(), self._ir.read_trec_run(str(run)))
            results[name] = {str(m): float(values[m]) for m in self._measures}
        return results

    def _read_qrels(self) -> Any:
        if isinstance(self._qrels, str) and self._qrels.startswith(IRDS_PREFIX):
            return self._dataset.qrels_iter()
        return self._ir.read_trec_qrels(str(self._qrels))
