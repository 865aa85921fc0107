"""Batch runner scaling: ``rerank_run`` against N fake vLLM servers, and its memory against the number of pairs.

The servers (``bench/_fake_vllm.py``, another process) answer each request after a
fixed latency with a fixed capacity, so one server completes ``capacity / latency``
requests a second and two CPU cores are not what limits the run: what is measured is
the runner's distribution logic (its window of units, the remote backend's routing
and concurrency). Each server count reranks ``rounds x capacity x N`` pairs (so every
run lasts about ``rounds x latency`` seconds); the target is a throughput of at least
0.9 x N times one server's, up to N = 16.

Memory: fresh processes rerank runs of rising size (each pair its own ~``passage
chars`` passage) against fast fake servers; the peak resident memory must not grow
with the pairs (the run is streamed, passages are read per query).

    python -m bench.batch_scaling
    python -m bench.batch_scaling --servers 1,2,4 --rounds 10 --memory-pairs 1000,4000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench._common import CACHE, RESULTS, Report, peak_rss_mib, rss_mib, run_child

WORDS = (
    "sort", "list", "order", "key", "reverse", "stable", "json", "encode", "decode", "string", "file", "path",
    "open", "read", "write", "process", "thread", "lock", "queue", "socket", "parse", "date", "time", "zone",
    "format", "number", "float", "integer", "round", "hash", "digest", "random", "seed",
)  # fmt: skip


@contextlib.contextmanager
def fake_servers(count: int, latency: float, capacity: int) -> Iterator[list[str]]:
    """``count`` fake servers in one child process; their base URLs."""
    command = [sys.executable, "-m", "bench._fake_vllm", "--servers", str(count)]
    command += ["--latency", str(latency), "--capacity", str(capacity)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        urls: list[str] = json.loads(process.stdout.readline())["urls"]
        yield urls
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def server_stats(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as response:
        stats: dict[str, float] = json.loads(response.read())
    return stats


def synthetic(directory: Path, pairs: int, depth: int, passage_chars: int, seed: int) -> dict[str, Path]:
    """A run of ``pairs`` pairs (``depth`` per query), every pair its own document, written as it is made."""
    paths = {name: directory / file for name, file in (("run", "run.trec"), ("corpus", "corpus.jsonl"))}
    paths["queries"] = directory / "queries.jsonl"
    if all(p.exists() for p in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with paths["run"].open("w") as run, paths["corpus"].open("w") as corpus, paths["queries"].open("w") as queries:
        for number in range(0, pairs, depth):
            qid = f"q{number // depth}"
            queries.write(json.dumps({"_id": qid, "text": " ".join(rng.choices(WORDS, k=8))}) + "\n")
            for rank in range(1, min(depth, pairs - number) + 1):
                docid = f"d{number + rank}"
                words, text = [], 0
                while text < passage_chars:
                    words.append(rng.choice(WORDS))
                    text += len(words[-1]) + 1
                corpus.write(json.dumps({"_id": docid, "title": docid, "text": " ".join(words)}) + "\n")
                run.write(f"{qid} Q0 {docid} {rank} {100 - rank} bm25\n")
    return paths


def tokenizer() -> str:
    from tests.models.tiny_models import build_tokenizer

    return str(build_tokenizer(CACHE / "tokenizer"))


def rerank(paths: dict[str, Path], urls: list[str], capacity: int, depth: int, work: Path) -> Any:
    """One run into a fresh judgments file; its summary."""
    from bench._fake_vllm import MODEL
    from rank1_integrations.batch import rerank_run
    from rank1_integrations.settings import Rank1Settings

    engine = Rank1Settings(
        servers=urls, model=MODEL, max_reasoning_tokens=64, max_concurrency=capacity * len(urls), tokenizer=tokenizer()
    )
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        result = rerank_run(
            paths["run"],
            corpus=paths["corpus"],
            queries=paths["queries"],
            out=Path(scratch) / "out.trec",
            reasoning=Path(scratch) / "judgments.jsonl",
            engine=engine,
            depth=depth,
            progress=False,
        )
    return result.summary


def child(args: argparse.Namespace) -> None:
    """One memory measurement in a fresh process: the last stdout line is its JSON."""
    paths = {name: Path(getattr(args, name)) for name in ("run", "corpus", "queries")}
    tokenizer()  # loaded before the baseline, like every import
    before = rss_mib()
    summary = rerank(paths, args.urls.split(","), args.capacity, args.depth, Path(args.work))
    payload = {
        "pairs": summary.pairs,
        "judged": summary.judged,
        "seconds": summary.seconds,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(payload), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="1,2,4,8,16", help="server counts to compare")
    parser.add_argument("--latency", type=float, default=4.0, help="seconds per request at a fake server")
    parser.add_argument("--capacity", type=int, default=4, help="requests a fake server works on at once")
    parser.add_argument("--rounds", type=int, default=10, help="pairs per run = rounds x capacity x servers")
    parser.add_argument("--depth", type=int, default=10, help="pairs per query")
    parser.add_argument("--passage-chars", type=int, default=1000)
    parser.add_argument("--memory-pairs", default="1000,4000,16000", help="run sizes for the memory check ('' skips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    # one memory measurement (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("run", "corpus", "queries", "urls", "work"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    args.model = "fake"  # the results' file name: bench/results/batch_scaling-fake.md
    report = Report("batch_scaling", "Batch runner: throughput vs fake vLLM servers, memory vs pairs", args)
    work = CACHE / "batch_scaling"
    work.mkdir(parents=True, exist_ok=True)

    counts = [int(n) for n in args.servers.split(",")]
    ideal = args.capacity / args.latency
    rows, rates = [], {}
    with fake_servers(max(counts), args.latency, args.capacity) as urls:
        for count in counts:
            pairs = args.rounds * args.capacity * count
            paths = synthetic(work / f"scaling-{pairs}", pairs, args.depth, args.passage_chars, args.seed)
            busy = [server_stats(url)["busy_seconds"] for url in urls[:count]]
            cpu = time.process_time()
            summary = rerank(paths, urls[:count], args.capacity, args.depth, work)
            cpu = time.process_time() - cpu
            busy = [server_stats(url)["busy_seconds"] - before for url, before in zip(urls, busy, strict=False)]
            use = sum(busy) / (count * args.capacity * summary.seconds)
            rates[count] = summary.judged_now / summary.seconds
            print(
                f"  {count} servers: {summary.judged_now} pairs in {summary.seconds:.1f} s, "
                f"first after {summary.first_judgment_after:.1f} s",
                flush=True,
            )
            rows.append(
                [
                    count,
                    pairs,
                    f"{summary.seconds:.1f}",
                    f"{rates[count]:.1f}",
                    f"{ideal * count:.1f}",
                    f"{use:.0%}",
                    f"{min(busy) / max(busy):.2f}",
                    f"{1000 * cpu / pairs:.1f}",
                ]
            )
    for row, count in zip(rows, counts, strict=True):
        speedup = rates[count] / rates[counts[0]] * counts[0]
        row[5:5] = [f"{speedup:.2f}x", f"{rates[count] / (ideal * count):.0%}"]
        report.check(
            f"{count} servers: throughput >= 0.9 x {count} x one server's",
            speedup >= 0.9 * count,
            f"{speedup:.2f}x",
        )
    report.table(
        f"rerank_run against N fake servers ({args.latency} s per request, {args.capacity} at once each)",
        [
            "servers",
            "pairs",
            "judging s",
            "pairs/s",
            "ideal pairs/s",
            "speed-up vs 1",
            "of ideal",
            "server slots busy",
            "least/most busy server",
            "client CPU ms/pair",
        ],
        rows,
        note="Judging time is the run's judging phase (after its inputs are indexed and checked). "
        f"Ideal = servers x capacity / latency. {args.capacity} requests in flight per server "
        "(max_concurrency / servers), a window of twice that. 'Server slots busy' is the servers' busy "
        "time over servers x capacity x judging time; 'client CPU' is this process's (all threads) per pair.",
    )

    sizes = [int(n) for n in args.memory_pairs.split(",") if n]
    if sizes:
        memory_rows = []
        with fake_servers(4, 0.01, 64) as urls:
            for pairs in sizes:
                paths = synthetic(work / f"memory-{pairs}", pairs, args.depth, args.passage_chars, args.seed)
                argv_child = ["--child", "--urls", ",".join(urls), "--capacity", "64", "--depth", str(args.depth)]
                argv_child += ["--work", str(work), *[f"--{k}={v}" for k, v in paths.items()]]
                result = run_child("bench.batch_scaling", argv_child)
                growth = result["peak_rss_mib"] - result["rss_before_mib"]
                passages = pairs * args.passage_chars / 2**20
                memory_rows.append(
                    [
                        pairs,
                        f"{passages:.1f}",
                        f"{result['seconds']:.1f}",
                        f"{result['rss_before_mib']:.0f}",
                        f"{result['peak_rss_mib']:.0f}",
                        f"{growth:.1f}",
                    ]
                )
                report.data.setdefault("memory", []).append(result)
        growths = [float(row[-1]) for row in memory_rows]
        largest, smallest = sizes[-1], sizes[0]
        report.check(
            f"peak memory flat from {smallest} to {largest} pairs",
            growths[-1] - growths[0] < max(8.0, 0.1 * largest * args.passage_chars / 2**20),
            f"growth during the run {growths[0]:.1f} MiB -> {growths[-1]:.1f} MiB "
            f"while the passages grow {smallest * args.passage_chars / 2**20:.1f} -> "
            f"{largest * args.passage_chars / 2**20:.1f} MiB",
        )
        report.table(
            "Memory of one run (a fresh process each) against 4 fast fake servers",
            ["pairs", "passages MiB", "judging s", "RSS before MiB", "peak RSS MiB", "growth MiB"],
            memory_rows,
            note="'RSS before' is after imports and the tokenizer, just before rerank_run; 'growth' is the "
            "run's peak above it. Each pair has its own document of about --passage-chars characters.",
        )
    report.data["pairs_per_second"] = rates
    report.write()


if __name__ == "__main__":
    main()
