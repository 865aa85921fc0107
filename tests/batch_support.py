"""Shared by the batch runner tests: run sets built from the cookbook's tiny BEIR set, output comparison,
and running ``rank1 run`` as a process that can be killed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from rank1_integrations.batch.inputs import passage_text, read_queries, read_run
from rank1_integrations.batch.records import PairRecord, RunSettings, text_digest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "cookbook" / "data"
TOLERANCE = 1e-4
"""Scores of one model on one engine kind agree to this (batch composition moves the last digits)."""
REMOTE_TOLERANCE = 1e-3
"""A server process computes with its own kernels and batches."""


@dataclass(frozen=True)
class RunSet:
    """A first-stage run with its corpus and queries (and qrels when there are some)."""

    run: Path
    corpus: Path
    queries: Path
    qrels: Path | None = None

    def args(self) -> list[str]:
        return ["--run", str(self.run), "--corpus", str(self.corpus), "--queries", str(self.queries)]


def tiny_set() -> RunSet:
    """The cookbook's set: 10 queries, 76 run lines, 52 documents, qrels."""
    return RunSet(TINY / "tiny.run", TINY / "tiny_corpus.jsonl", TINY / "tiny_queries.jsonl", TINY / "tiny.qrels")


def wide_set(directory: Path, *, variants: int = 3, docs: int = 4) -> RunSet:
    """A longer run on the tiny corpus: each tiny query in ``variants`` wordings, ``docs`` documents each.

    Deterministic: documents are picked by hashing, so every test builds the same set.
    """
    directory.mkdir(parents=True, exist_ok=True)
    queries = [json.loads(line) for line in (TINY / "tiny_queries.jsonl").read_text().splitlines()]
    corpus = [json.loads(line)["_id"] for line in (TINY / "tiny_corpus.jsonl").read_text().splitlines()]
    wordings = ("{}", "In Python: {}", "Please explain: {}", "Question: {}")[:variants]
    query_lines, run_lines = [], []
    for query in queries:
        for number, wording in enumerate(wordings):
            qid = f"{query['_id']}v{number}"
            query_lines.append(json.dumps({"_id": qid, "text": wording.format(query["text"])}))
            ranked = sorted(corpus, key=lambda d, q=qid: hashlib.sha256(f"{q}/{d}".encode()).hexdigest())[:docs]
            run_lines += [f"{qid} Q0 {d} {rank} {10 - rank}.5 bm25" for rank, d in enumerate(ranked, start=1)]
    (directory / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (directory / "wide.run").write_text("\n".join(run_lines) + "\n")
    return RunSet(directory / "wide.run", TINY / "tiny_corpus.jsonl", directory / "queries.jsonl")


def finished_checkpoint(data: RunSet, path: Path, settings: RunSettings, depth: int) -> dict[str, list[str]]:
    """Write the checkpoint (and its settings file) a finished run of ``data`` leaves, every pair judged with
    made-up scores; returns the reranked run those scores give."""
    queries = read_queries(data.queries)
    corpus = {doc["_id"]: doc for doc in map(json.loads, data.corpus.read_text().splitlines())}
    lines, order = [], {}
    for ranking in read_run(data.run):
        top = ranking.docids[:depth]
        scores = {d: int(hashlib.sha256(f"{ranking.qid}/{d}".encode()).hexdigest()[:4], 16) / 0xFFFF for d in top}
        for d in top:
            digest = text_digest(queries[ranking.qid], passage_text(corpus[d].get("title"), corpus[d].get("text")))
            record = PairRecord(
                ranking.qid,
                d,
                scores[d],
                scores[d] > 0.5,
                False,
                3,
                "made up",
                False,
                None,
                settings.fingerprint,
                digest,
            )
            lines.append(record.to_json() + "\n")
        order[ranking.qid] = sorted(top, key=lambda d, s=scores, t=top: (-s[d], t.index(d))) + list(
            ranking.docids[depth:]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    settings_file = path.with_name(path.name + ".settings.json")
    settings_file.write_text(json.dumps({"fingerprint": settings.fingerprint, "settings": settings.to_dict()}))
    return order


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def trec(path: Path) -> dict[str, list[str]]:
    ranking: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, *_ = line.split()
        ranking.setdefault(qid, []).append(docid)
    return ranking


def assert_same_outputs(got: tuple[Path, Path], want: tuple[Path, Path], tolerance: float = TOLERANCE) -> None:
    """Two runs' (TREC run, judgments) agree: the same pairs in the same order with the same
    reasoning and verdicts, scores within ``tolerance``, and the same reranked order except
    where two scores are that close (batch composition may swap them)."""
    got_records, want_records = records(got[1]), records(want[1])
    assert [(r["qid"], r["docid"]) for r in got_records] == [(r["qid"], r["docid"]) for r in want_records]
    for g, w in zip(got_records, want_records, strict=True):
        assert g["error"] is None, g
        assert w["error"] is None, w
        assert abs(float(g["score"]) - float(w["score"])) <= tolerance, (g, w)  # type: ignore[arg-type]
        assert (g["forced"], g["reasoning_tokens"], g["truncated"]) == (
            w["forced"],
            w["reasoning_tokens"],
            w["truncated"],
        )
        assert g["reasoning"] == w["reasoning"]
    scores = {(str(r["qid"]), str(r["docid"])): float(r["score"]) for r in want_records}  # type: ignore[arg-type]
    got_run, want_run = trec(got[0]), trec(want[0])
    assert list(got_run) == list(want_run)
    for qid, want_docs in want_run.items():
        got_docs = got_run[qid]
        assert sorted(got_docs) == sorted(want_docs)
        place = {d: i for i, d in enumerate(got_docs)}
        for i, a in enumerate(want_docs):
            for b in want_docs[i + 1 :]:
                if place[a] > place[b]:  # swapped: only allowed between (near-)equal scores
                    assert abs(scores[(qid, a)] - scores[(qid, b)]) <= tolerance, (qid, a, b)


SUMMARY = re.compile(r"this run: judged (\d+), failed (\d+), (\d+) from the checkpoint")


def summary_counts(stderr: str) -> tuple[int, int, int]:
    """(judged now, failed now, from the checkpoint) from a run's summary."""
    found = SUMMARY.findall(stderr)
    assert found, stderr[-3000:]
    judged, failed, before = found[-1]
    return int(judged), int(failed), int(before)


def complete_judged_pairs(path: Path) -> set[tuple[str, str]]:
    """The pairs a checkpoint holds a judgment for: complete lines only (a kill may tear the last)."""
    pairs = set()
    for line in path.read_bytes().split(b"\n")[:-1]:
        record = json.loads(line)
        if record["error"] is None:
            pairs.add((record["qid"], record["docid"]))
    return pairs


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rank1_integrations", "run", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment (offline, CPU vLLM settings), with the repository importable by Ray's workers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_cli(
    args: list[str], *, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def kill_mid_run(
    args: list[str],
    checkpoint: Path,
    *,
    until: Callable[[int], bool],
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> str:
    """Start the CLI, wait until ``until(lines in the checkpoint)``, then SIGKILL it and every process it started.

    Returns its stderr so far. Fails if the run ends before it can be killed mid-run.
    """
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    log = checkpoint.with_name("killed-run.log")
    with log.open("w") as err:
        process = subprocess.Popen(
            cli_command(*args),
            cwd=REPO,
            env=env or cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no progress to kill in:\n{log.read_text()[-3000:]}"
                lines = checkpoint.read_bytes().count(b"\n") if checkpoint.exists() else 0
                if until(lines):
                    break
                time.sleep(0.01)
        finally:
            _kill_tree(process.pid)
            process.wait(timeout=60)
    return log.read_text()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (Ray's raylet, GCS and workers), by pid."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
