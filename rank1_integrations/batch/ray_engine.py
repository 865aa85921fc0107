"""The Ray Data engine, as vLLM documents offline batch inference at scale: ``map_batches`` over the pairs with a
pool of async actors, each holding one reranker and running several batches at once. Ray is imported here only."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.batch.plan import WorkUnit, judged_records, run_reranker
from rank1_integrations.batch.records import PairRecord, RunSettings
from rank1_integrations.errors import BackendError, InvalidInputError, Rank1Error
from rank1_integrations.settings import Rank1Settings

__all__ = ["RayEngine", "RayJudge", "RerankActor"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RANK1_ERROR_LINE = re.compile(r"^rank1_integrations\.errors\.(\w+): (.*)$", re.M)
_PURPOSE = "Batch reranking on Ray (--ray)"


@dataclass(frozen=True)
class RayEngine:
    """An actor pool of ``num_engines`` rerankers built from ``settings`` (an embedded engine on ``gpus_per_engine``
    GPUs, default one where the cluster has GPUs; or a client of its servers) at Ray's ``address`` (None: local).
    Actors take ``batch_size`` pairs per call (whole queries under adaptive effort), several calls at once."""

    settings: Rank1Settings
    num_engines: int = 1
    address: str | None = None
    gpus_per_engine: float | None = None
    cpus_per_engine: float = 1.0
    batch_size: int = 64


class RerankActor:
    """A reranker per Ray actor: ``map_batches`` calls it with pyarrow tables of (qid, docid, query, passage)."""

    def __init__(self, settings: Rank1Settings) -> None:
        self._reranker = run_reranker(settings)
        run_settings = RunSettings.of(self._reranker)
        self._fingerprint = run_settings.fingerprint
        self._settings = json.dumps(run_settings.to_dict())

    async def __call__(self, batch: Any) -> Any:
        pa = require("pyarrow", extras=("ray",), purpose=_PURPOSE)
        rows = batch.to_pylist()
        judged = judged_records(self._reranker, _units(rows), max_in_flight=len(rows), settings=self._fingerprint)
        records = await asyncio.to_thread(lambda: [record for finished in judged for record in finished])
        return pa.Table.from_pylist(
            [{**dataclasses.asdict(r), "settings_json": self._settings} for r in records], schema=_output_schema(pa)
        )


def _backend_error(err: Exception) -> BackendError:
    """A Ray failure as a :class:`BackendError` naming the first rank1 error behind it, if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Ray re-raises an actor's error as a class of its own deriving from it: look for ours.
        if isinstance(current, Rank1Error) and type(current).__module__.startswith("rank1_integrations"):
            return BackendError(f"a Ray actor failed: {type(current).__name__}: {current}")
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    # An actor that died in __init__ leaves only the text of its traceback.
    text = _ANSI.sub("", str(err))
    if named := _RANK1_ERROR_LINE.findall(text):
        name, message = named[-1]
        return BackendError(f"a Ray actor failed: {name}: {message[:500]}")
    first_line = (text.strip().splitlines() or [""])[0][:500]
    return BackendError(f"Ray could not judge the pairs: {type(err).__name__}: {first_line}")


def _settings_of(settings: Rank1Settings) -> dict[str, Any]:
    with run_reranker(settings) as reranker:
        return RunSettings.of(reranker).to_dict()


def _units(rows: list[dict[str, Any]]) -> Iterator[WorkUnit]:
    """Consecutive rows of one query become one unit."""
    for qid, group in itertools.groupby(rows, key=lambda row: row["qid"]):
        chunk = list(group)
        docids, passages = tuple(r["docid"] for r in chunk), tuple(r["passage"] for r in chunk)
        yield WorkUnit(qid, chunk[0]["query"], docids, passages)


def _output_schema(pa: Any) -> Any:
    kinds = {"str": pa.string(), "float": pa.float64(), "bool": pa.bool_(), "int": pa.int64()}
    fields = [(f.name, kinds[str(f.type).split(" ")[0]]) for f in dataclasses.fields(PairRecord)]
    return pa.schema([*fields, ("settings_json", pa.string())])


class RayJudge:
    """Runs a :class:`RayEngine`; starts (and later stops) a local Ray instance unless one is running."""

    def __init__(self, spec: RayEngine) -> None:
        for name, least in (("num_engines", 1), ("batch_size", 1)):
            value = getattr(spec, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise InvalidInputError(f"RayEngine.{name} must be an int >= {least}, got {value!r}")
        for name in ("cpus_per_engine", "gpus_per_engine"):
            value = getattr(spec, name)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise InvalidInputError(f"RayEngine.{name} must be a non-negative number, got {value!r}")
        self._ray = require("ray", extras=("ray",), purpose=_PURPOSE)
        self._data = require("ray.data", extras=("ray",), purpose=_PURPOSE)
        self._pa = require("pyarrow", extras=("ray",), purpose=_PURPOSE)
        self.spec = spec
        self.settings: RunSettings | None = None
        # Adaptive effort needs a whole query in one call: blocks of whole queries, each one batch.
        self._whole = spec.settings.reasoning_effort == "adaptive"
        self.unit_size = 1 << 62 if self._whole else spec.batch_size
        self._started = not self._ray.is_initialized()
        if self._started:
            self._ray.init(address=spec.address, include_dashboard=False)
        self._data.DataContext.get_current().enable_progress_bars = False  # the run has its own

    def _gpus(self) -> float:
        if self.spec.gpus_per_engine is not None:
            return float(self.spec.gpus_per_engine)
        return float(self.spec.settings.embedded and self._ray.cluster_resources().get("GPU", 0) > 0)

    def judge(self, units: Iterator[WorkUnit]) -> Iterator[list[PairRecord]]:
        blocks = self._blocks(units)
        if not blocks:
            return
        dataset = self._data.from_arrow_refs(blocks).map_batches(
            RerankActor,
            fn_constructor_kwargs={"settings": self.spec.settings},
            batch_size=None if self._whole else self.spec.batch_size,
            batch_format="pyarrow",
            compute=self._data.ActorPoolStrategy(size=self.spec.num_engines),
            num_cpus=self.spec.cpus_per_engine,
            num_gpus=self._gpus(),
        )
        del blocks  # the dataset holds them until they are judged
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = table.to_pylist()
                if rows and self.settings is None:
                    self.settings = RunSettings.from_dict(json.loads(rows[0]["settings_json"]))
                yield [
                    PairRecord(**{name: value for name, value in row.items() if name != "settings_json"})
                    for row in rows
                ]
        except Exception as err:  # Ray wraps what failed in the actors (or Ray itself failed)
            raise _backend_error(err) from err

    def probe_settings(self) -> RunSettings:
        """One reranker started as a Ray task with an actor's resources, asked for its settings."""
        if self.settings is None:
            probe = self._ray.remote(num_cpus=self.spec.cpus_per_engine, num_gpus=self._gpus())(_settings_of)
            self.settings = RunSettings.from_dict(self._ray.get(probe.remote(self.spec.settings)))
        return self.settings

    def _blocks(self, units: Iterator[WorkUnit]) -> list[Any]:
        """The pairs as object-store blocks of ``batch_size`` rows (only one block is in this process at a time)."""
        refs: list[Any] = []
        rows: list[dict[str, str]] = []
        for unit in units:
            pairs = zip(unit.docids, unit.passages, strict=True)
            rows += ({"qid": unit.qid, "docid": d, "query": unit.query, "passage": p} for d, p in pairs)
            while len(rows) >= self.spec.batch_size:  # under adaptive effort, whole queries
                size = len(rows) if self._whole else self.spec.batch_size
                refs.append(self._ray.put(self._pa.Table.from_pylist(rows[:size])))
                del rows[:size]
        if rows:
            refs.append(self._ray.put(self._pa.Table.from_pylist(rows)))
        return refs

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
