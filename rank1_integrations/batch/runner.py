"""``rerank_run``, one path for every engine: lock the checkpoint, check the inputs, judge what the checkpoint lacks
(each record appended as it completes), compact it, write the run. With nothing to judge, no engine starts."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rank1_integrations.batch.checkpoint import Checkpoint, StorageError, side_files
from rank1_integrations.batch.inputs import IRDS_PREFIX, open_corpus, read_queries
from rank1_integrations.batch.outputs import DEFAULT_MEASURES, Evaluation, read_trec, reranked, write_trec
from rank1_integrations.batch.plan import SHOWN, Plan, WorkUnit, judged_records, run_reranker
from rank1_integrations.batch.ray_engine import RayEngine, RayJudge
from rank1_integrations.batch.records import PairRecord, RunSettings, effort_of
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.errors import InvalidInputError, Rank1Error
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.settings import Rank1Settings

__all__ = ["Engine", "IncompleteRunError", "RerankedRun", "RunSummary", "rerank_run"]

logger = logging.getLogger("rank1_integrations.batch")


class IncompleteRunError(Rank1Error):
    """A run ended with pairs that could not be judged (their errors are in the checkpoint): the same command
    retries them, but for the ``invalid`` ones, attempted again only once their texts change."""

    def __init__(self, message: str, *, failed: int, total: int, invalid: int = 0) -> None:
        super().__init__(message)
        self.failed = failed
        self.total = total
        self.invalid = invalid
        """How many of the ``failed`` pairs are invalid input."""


@dataclass
class RunSummary:
    """A run in numbers. ``judged``/``forced``/``failed``/``invalid`` count every pair of the run at its end."""

    pairs: int
    from_checkpoint: int
    judged_now: int = 0
    failed_now: int = 0
    reasoning_tokens_now: int = 0
    seconds: float = 0.0
    """Judging time of this run."""
    first_judgment_after: float | None = None
    """Seconds until the first judgments came back (Ray starts its actors and engines meanwhile)."""
    judged: int = 0
    forced: int = 0
    failed: int = 0
    """Pairs without a judgment (``invalid`` of them refused as invalid input, the rest retried by the next run)."""
    invalid: int = 0

    def _per_second(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        share = self.forced / self.judged if self.judged else 0.0
        rate, tokens = self._per_second(self.judged_now), self._per_second(self.reasoning_tokens_now)
        return (
            f"pairs: {self.pairs} ({self.judged} judged, {self.failed} failed, {self.invalid} of them invalid input); "
            f"forced answers: {self.forced} ({share:.1%} of judged)\n"
            f"this run: judged {self.judged_now}, failed {self.failed_now}, "
            f"{self.from_checkpoint} from the checkpoint; "
            f"wall time {self.seconds:.1f} s ({rate:.2f} pairs/s, {tokens:.1f} reasoning tokens/s)"
        )


@dataclass(frozen=True)
class RerankedRun:
    """What a run produced: the reranked TREC run, rank1's judgments, the numbers, and metrics if asked."""

    out: Path
    reasoning: Path
    """The judgments JSONL (the checkpoint)."""
    summary: RunSummary
    metrics: dict[str, dict[str, float]] | None = None
    """``{"first stage": {measure: value}, "rank1": {...}}`` when qrels were given."""

    def rankings(self) -> Iterator[tuple[str, list[str]]]:
        """Each query's reranked documents, best first, read from ``out`` (nothing held in memory)."""
        return read_trec(self.out)

    def as_dict(self) -> dict[str, list[str]]:
        return dict(self.rankings())


def rerank_run(
    run: str | Path,
    *,
    corpus: str | Path,
    queries: str | Path,
    out: str | Path,
    reasoning: str | Path,
    engine: Engine,
    depth: int | None = 100,
    max_in_flight: int | None = None,
    allow_failures: bool = False,
    qrels: str | Path | None = None,
    measures: Sequence[str] = DEFAULT_MEASURES,
    progress: bool | None = None,
    fsync_interval: float = 5.0,
    say: Callable[[str], None] | None = None,
) -> RerankedRun:
    """Rerank each query's first ``depth`` documents of ``run`` into ``out``; ``reasoning`` (one JSON line per pair)
    is the checkpoint: the same call after any interruption judges only what it lacks (docs/batch.md). Raises
    :class:`IncompleteRunError` when pairs failed (unless ``allow_failures``: ranked last), :class:`StorageError`."""
    note = say or logger.info
    run_path, out_path, judgments_path = Path(run), Path(out), Path(reasoning)
    if not run_path.is_file():
        raise InvalidInputError(f"the run file {run_path} does not exist")
    _check_paths({"run": run, "corpus": corpus, "queries": queries, "qrels": qrels}, out_path, judgments_path)
    evaluation = Evaluation(qrels, measures) if qrels is not None else None
    for name, path in (("out", out_path), ("reasoning", judgments_path)):  # fail before anything is judged
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidInputError(f"cannot create the folder of {name} {path}: {err.strerror or err}") from None
        if path.is_dir():
            raise InvalidInputError(f"{name} {path} is a folder: name a file")
    try:
        with Checkpoint(judgments_path, fsync_interval=fsync_interval) as checkpoint:
            if checkpoint.records:
                note(f"Resuming: {judgments_path} holds {checkpoint.records} records")
            texts = read_queries(queries)
            with contextlib.closing(open_corpus(corpus, checkpoint.work_dir / "corpus.sqlite")) as documents:
                plan = Plan(run_path, queries=texts, corpus=documents, checkpoint=checkpoint, depth=depth)
                survey = plan.survey()
                note(
                    f"{survey.queries} queries, {survey.pairs} pairs: {survey.judged} judged before, "
                    f"{survey.remaining} to judge ({survey.failed} of them failed before), "
                    f"{survey.invalid} invalid input (not judged again)"
                )
                summary = RunSummary(pairs=survey.pairs, from_checkpoint=survey.judged)
                # Other settings are refused before any engine starts, where the checkpoint's settings file can tell.
                if not checkpoint.check_known(known_settings(engine)) or survey.remaining:
                    with contextlib.closing(open_judge(engine, max_in_flight=max_in_flight)) as judge:
                        if survey.remaining:
                            _judge_all(plan, checkpoint, judge, summary, survey.remaining, progress)
                        else:
                            checkpoint.check(judge.probe_settings())
                checkpoint.compact((ranking.qid, top) for ranking, top in plan.rankings())
                refused: list[str] = []
                for ranking, top in plan.rankings():
                    for docid, state in checkpoint.states(ranking.qid, top).items():
                        summary.judged += state.judged
                        summary.forced += state.judged and state.forced
                        summary.invalid += state.invalid
                        if state.invalid and len(refused) < SHOWN:
                            error = PairRecord.from_json(checkpoint.read(state.offset)).error
                            refused.append(f"{ranking.qid}/{docid} ({error})")
                summary.failed = summary.pairs - summary.judged
                note(summary.text())
                if summary.failed and not allow_failures:
                    raise _incomplete(summary, refused, judgments_path)
                write_trec(
                    out_path,
                    (
                        (ranking.qid, reranked(ranking.docids, top, checkpoint.states(ranking.qid, top)))
                        for ranking, top in plan.rankings()
                    ),
                )
    except (OSError, sqlite3.Error) as err:  # a full disk, a file size limit: raised once the checkpoint is closed
        raise StorageError(
            f"the run stopped on an OS error ({type(err).__name__}: {err}); the judgments written before are kept "
            f"in {judgments_path}: fix the cause (disk space, a file size limit, permissions) and run the same "
            "command again to resume"
        ) from err
    note(f"Wrote {out_path} and {judgments_path}")
    metrics = evaluation({"first stage": run_path, "rank1": out_path}) if evaluation is not None else None
    return RerankedRun(out_path, judgments_path, summary, metrics)


def _check_paths(inputs: Mapping[str, str | Path | None], out: Path, judgments: Path) -> None:
    """Refuse outputs that would write over an input or over each other (links and relative paths resolved)."""
    sources = [
        (f"the {name} file", Path(path))
        for name, path in inputs.items()
        if path is not None and not (isinstance(path, str) and path.startswith(IRDS_PREFIX))
    ]
    checkpoint = [judgments, *side_files(judgments)]
    out_files = [out, out.with_name(out.name + ".tmp")]  # and write_trec's temporary file
    for name, written, kept in (
        ("reasoning", checkpoint, sources),
        ("out", out_files, [*sources, *(("the checkpoint's files", path) for path in checkpoint)]),
    ):
        for path, (what, other) in itertools.product(written, kept):
            if _overlap(path, other):
                raise InvalidInputError(f"{name} {written[0]} would write over {what} ({other}): choose another")


def _overlap(a: Path, b: Path) -> bool:
    """One path is the other (a link to it, a hard link included) or a folder holding it."""
    a_real, b_real = a.resolve(), b.resolve()
    if a_real == b_real or a_real in b_real.parents or b_real in a_real.parents:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _incomplete(summary: RunSummary, refused: list[str], judgments: Path) -> IncompleteRunError:
    """Why the run is incomplete, and what to do: retry the failed pairs, correct the invalid ones."""
    retry = summary.failed - summary.invalid
    reasons, remedies = [], []
    if retry:
        reasons.append(f"{retry} failed")
        remedies.append("run the same command again to retry the failed ones")
    if summary.invalid:
        reasons.append(f"{summary.invalid} are invalid input, e.g. {'; '.join(refused)}")
        remedies.append(
            "correct the invalid ones' texts in the corpus or queries (they are not judged again while their "
            "texts stay the same)"
        )
    return IncompleteRunError(
        f"{summary.failed} of {summary.pairs} pairs could not be judged ({', '.join(reasons)}; their errors are in "
        f"{judgments}): {'; '.join(remedies)}; or allow failures to rank them below the judged documents",
        failed=summary.failed,
        total=summary.pairs,
        invalid=summary.invalid,
    )


def _judge_all(
    plan: Plan,
    checkpoint: Checkpoint,
    judge: InProcessJudge | RayJudge,
    summary: RunSummary,
    total: int,
    progress: bool | None,
) -> None:
    """Judge the remaining pairs, appending each batch of records to the checkpoint as it completes; a tqdm bar on
    stderr (pairs/s, reasoning tokens/s, ETA) unless ``progress`` is False (None: on a terminal only)."""
    if judge.settings is not None:
        checkpoint.check(judge.settings)  # before any work: a mismatch costs nothing
    checked = judge.settings is not None
    from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

    disable = None if progress is None else not progress  # None: shown on a terminal only
    bar = tqdm(total=total, desc="rank1", unit="pair", dynamic_ncols=True, file=sys.stderr, disable=disable)
    started = time.monotonic()
    try:
        for records in judge.judge(plan.units(judge.unit_size)):
            if not checked and judge.settings is not None:
                checkpoint.check(judge.settings)  # Ray: the actors know their settings
                checked = True
            checkpoint.append(records)
            judged = sum(record.judged for record in records)
            summary.judged_now += judged
            summary.failed_now += len(records) - judged
            summary.reasoning_tokens_now += sum(record.reasoning_tokens for record in records)
            summary.seconds = time.monotonic() - started
            if summary.first_judgment_after is None:
                summary.first_judgment_after = summary.seconds
            tokens = summary._per_second(summary.reasoning_tokens_now)
            bar.set_postfix_str(f"{tokens:.0f} reasoning tok/s, {summary.failed_now} failed", refresh=False)
            bar.update(len(records))
    finally:
        summary.seconds = time.monotonic() - started
        bar.close()


DEFAULT_MAX_IN_FLIGHT = 1024  # pairs in flight on an embedded engine: more than vLLM runs at once
UNITS_IN_WINDOW = 16  # a work unit (one call) holds at most 1/16 of the window

Engine = Rank1Reranker | Rank1Settings | RayEngine
"""What ``rerank_run`` judges on: a ready reranker, the settings of one to start, or Ray actors of those."""


class InProcessJudge:
    """A reranker in this process, driven with a window of ``max_in_flight`` pairs (as :class:`RayJudge` is used)."""

    def __init__(self, reranker: Rank1Reranker, *, max_in_flight: int, owned: bool) -> None:
        self.reranker = reranker
        self.settings = RunSettings.of(reranker)
        # A unit frees its place in the window only when its last pair is judged: small units keep the
        # window (and so the engine or servers) full while stragglers finish. Adaptive takes whole queries.
        whole = reranker.settings.reasoning_effort == "adaptive"
        self.unit_size = 1 << 62 if whole else max(1, max_in_flight // UNITS_IN_WINDOW)
        self._window = max_in_flight
        self._owned = owned

    def judge(self, units: Iterator[WorkUnit]) -> Iterator[list[PairRecord]]:
        return judged_records(self.reranker, units, max_in_flight=self._window, settings=self.settings.fingerprint)

    def probe_settings(self) -> RunSettings:
        return self.settings

    def close(self) -> None:
        if self._owned:
            self.reranker.close()


def known_settings(engine: Engine) -> dict[str, Any]:
    """The :class:`RunSettings` fields the engine fixes without being started: all of a reranker's; of
    settings, the model (as given), template, budget, effort, and context size where given."""
    if isinstance(engine, Rank1Reranker):
        return asdict(RunSettings.of(engine))
    settings = engine.settings if isinstance(engine, RayEngine) else engine
    if not isinstance(settings, Rank1Settings):
        raise InvalidInputError(
            f"engine must be a Rank1Reranker, Rank1Settings or RayEngine, got {type(engine).__name__}"
        )
    # A server's model and context are the servers' to say (unless given); vLLM gives an embedded engine the
    # context it is told to have.
    given = {"model": settings.model, "context_size": settings.context_size}
    if settings.context_size is None and settings.embedded:
        given["context_size"] = settings.engine_args.get("max_model_len")
    return {
        "template": resolve_template(settings.template),
        "max_reasoning_tokens": settings.max_reasoning_tokens,
        **effort_of(settings),
        **{name: value for name, value in given.items() if value is not None},
    }


def open_judge(engine: Engine, *, max_in_flight: int | None) -> InProcessJudge | RayJudge:
    """Start the engine (load the model, reach the servers or Ray)."""
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise InvalidInputError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    if isinstance(engine, Rank1Reranker):
        # The caller's reranker keeps its settings and backend, without its cache.
        copy = Rank1Reranker(engine.backend, engine.settings, cache=False)
        return InProcessJudge(copy, max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT, owned=False)
    if isinstance(engine, Rank1Settings):
        # Servers: twice the requests in flight, so each server has its next requests waiting.
        window = DEFAULT_MAX_IN_FLIGHT if engine.embedded else 2 * engine.max_concurrency
        return InProcessJudge(run_reranker(engine), max_in_flight=max_in_flight or window, owned=True)
    return RayJudge(engine)  # known_settings refused any other engine
