"""rank1-serve: requests/s and latency through the HTTP API vs direct ``Rank1Reranker.judge`` calls,
on the same engine, at 1, 8 and 32 concurrent clients.

Each client sends its own requests one after another (each request: its own query and
``--docs`` passages, so nothing is shared or cached). Direct: N threads in this process
call ``reranker.judge``. API: rank1-serve's app runs in this process (uvicorn in a thread,
over the same reranker and engine) and N client threads post ``/v1/rerank`` from a
separate client process, so the client's own Python work does not compete for this
process's GIL. Variants alternate and rotate every round; medians are reported, with
p50/p95 latency over every request of every timed round.

    python -m bench.serve_api                       # random model, 1, 8 and 32 clients
    python -m bench.serve_api --model smollm2 --runs 3
    python -m bench.serve_api --model jhu-clsp/rank1-7b --docs 20 --budget 1024   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench._common import (
    REPO,
    Report,
    Sample,
    add_common_args,
    engine_llm,
    finish_args,
    interleaved,
    load_reranker,
    make_passages,
    make_queries,
    median,
)

TARGET_API_SHARE = 0.95
"""The API may cost at most 5% of direct throughput."""
Work = list[list[tuple[str, list[str]]]]
"""For each client, its requests in order: (query, passages)."""


@dataclass
class Outcome:
    wall: float
    latencies: list[float]
    scores: list[list[list[float | None]]] = field(default_factory=list)
    """For each client and request, the scores in passage order."""
    admissions: int = 0
    """Times the engine loop admitted new requests into its running batch."""
    server_seconds: float = 0.0
    """API only: the app's time answering the requests (its request-duration histogram)."""
    judge_seconds: float = 0.0
    """API only: of which in ``reranker.ajudge`` (its judge-duration histogram)."""


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


def run_clients(work: Work, one: Callable[[int, str, list[str]], list[float | None]]) -> Outcome:
    """N threads, released together, each doing its requests in order with ``one(client, query, passages)``."""
    barrier = threading.Barrier(len(work) + 1)
    latencies: list[list[float]] = [[] for _ in work]
    scores: list[list[list[float | None]]] = [[] for _ in work]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        barrier.wait()
        try:
            for query, passages in work[index]:
                started = time.perf_counter()
                scores[index].append(one(index, query, passages))
                latencies[index].append(time.perf_counter() - started)
        except BaseException as err:  # reported after the join
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Outcome(wall, [x for per in latencies for x in per], scores)


# -- the client process ------------------------------------------------------------------------


def client_process(url: str) -> None:
    """Reads one workload per stdin line, posts it with one keep-alive connection per client, answers JSON."""
    import httpx

    clients: list[httpx.Client] = []
    for line in sys.stdin:
        work: Work = [[(q, list(p)) for q, p in per] for per in json.loads(line)]
        while len(clients) < len(work):
            clients.append(httpx.Client(base_url=url, timeout=3600))

        def post(index: int, query: str, passages: list[str]) -> list[float | None]:
            response = clients[index].post(
                "/v1/rerank", json={"query": query, "documents": passages, "return_documents": False}
            )
            response.raise_for_status()
            by_index = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
            return [by_index.get(i) for i in range(len(passages))]

        outcome = run_clients(work, post)
        print(json.dumps({"wall": outcome.wall, "latencies": outcome.latencies, "scores": outcome.scores}), flush=True)


class ClientProcess:
    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.serve_api", "--client-of", url],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, work: Work) -> Outcome:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(work) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the client process exited with {self.process.wait()}")
        answer = json.loads(line)
        return Outcome(answer["wall"], answer["latencies"], answer["scores"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


# -- the benchmark -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--client-of"]:
        client_process(argv[1])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, a comma list")
    parser.add_argument("--docs", type=int, default=None, help="passages per request (default 10; 2 smollm2)")
    parser.add_argument(
        "--requests", type=int, default=32, help="requests per level, spread over its clients (at least 1 each)"
    )
    args = parser.parse_args(argv)
    if args.docs is None:
        args.docs = 2 if args.model == "smollm2" else 10
    args = finish_args(args)
    levels = [int(n) for n in str(args.clients).split(",")]
    report = Report("serve_api", "rank1-serve: API vs direct judge on the same engine", args)

    import uvicorn

    from rank1_integrations.serve import create_app

    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    stats = reranker.backend.engine_stats  # type: ignore[attr-defined]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_app(reranker)
    registry = app.state.metrics.registry

    def app_seconds() -> tuple[float, float]:
        served = registry.get_sample_value("rank1_serve_request_duration_seconds_sum", {"endpoint": "/v1/rerank"})
        judged = registry.get_sample_value("rank1_serve_judge_duration_seconds_sum")
        return served or 0.0, judged or 0.0

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    while not server.started:
        time.sleep(0.05)
    client = ClientProcess(f"http://127.0.0.1:{port}")

    rows, app_rows, worst = [], [], float("inf")
    try:
        for clients in levels:
            per_client = max(1, args.requests // clients)
            queries = make_queries(clients * per_client, seed=args.seed, tag=f"c{clients}-")
            work: Work = [
                [
                    (
                        queries[c * per_client + k],
                        make_passages(args.docs, args.passage_words, seed=args.seed, tag=f"c{clients}q{c}r{k}-"),
                    )
                    for k in range(per_client)
                ]
                for c in range(clients)
            ]

            def judge(_: int, query: str, passages: list[str]) -> list[float | None]:
                return [j.score for j in reranker.judge(query, passages)]

            def counted(run: Callable[[], Outcome]) -> Callable[[], Outcome]:
                def measured() -> Outcome:
                    before, (served, judged) = stats.admissions, app_seconds()
                    outcome = run()
                    outcome.admissions = stats.admissions - before
                    served_after, judged_after = app_seconds()
                    outcome.server_seconds, outcome.judge_seconds = served_after - served, judged_after - judged
                    return outcome

                return measured

            print(f"{clients} clients x {per_client} requests x {args.docs} passages", flush=True)
            variants: dict[str, Callable[[], Outcome]] = {
                "direct judge": counted(lambda work=work: run_clients(work, judge)),  # type: ignore[misc]
                "API (/v1/rerank)": counted(lambda work=work: client.run(work)),  # type: ignore[misc]
            }
            samples = interleaved(variants, runs=args.runs, warmup=args.warmup)
            direct: list[Sample] = samples["direct judge"]
            api: list[Sample] = samples["API (/v1/rerank)"]
            requests = clients * per_client
            share = median([d.result.wall / a.result.wall for d, a in zip(direct, api, strict=True)])
            worst = min(worst, share)
            outside = median([(a.result.server_seconds - a.result.judge_seconds) / requests for a in api])
            outside_share = median([1 - a.result.judge_seconds / a.result.server_seconds for a in api])
            app_rows.append([clients, f"{outside * 1000:.2f}", f"{outside_share:.2%}"])
            for name, runs in (("direct judge", direct), ("API (/v1/rerank)", api)):
                walls = [s.result.wall for s in runs]
                latencies = [x for s in runs for x in s.result.latencies]
                rows.append(
                    [
                        clients,
                        name,
                        f"{requests / median(walls):.2f}",
                        f"{requests * args.docs / median(walls):.1f}",
                        f"{percentile(latencies, 50):.3f}",
                        f"{percentile(latencies, 95):.3f}",
                        f"{min(walls):.3f}-{max(walls):.3f}",
                        f"{median([float(s.result.admissions) for s in runs]):.0f}",
                        f"{share:.3f}" if name.startswith("API") else "1.000",
                    ]
                )
            diffs = [
                abs(a - b)
                for per_d, per_a in zip(direct[-1].result.scores, api[-1].result.scores, strict=True)
                for req_d, req_a in zip(per_d, per_a, strict=True)
                for a, b in zip(req_d, req_a, strict=True)
                if a is not None and b is not None
            ]
            report.check(
                f"{clients} clients: API scores equal judge's (1e-4)",
                bool(diffs) and max(diffs) < 1e-4,
                f"{len(diffs)} compared, max abs difference {max(diffs, default=float('nan')):.1e}",
            )
            report.check(
                f"{clients} clients: API throughput >= {TARGET_API_SHARE:.0%} of direct",
                share >= TARGET_API_SHARE,
                f"{share:.3f}",
            )
    finally:
        client.close()
        server.should_exit = True
        serving.join(timeout=30)

    report.table(
        f"{args.docs} passages per request, budget {args.budget}, median of {args.runs} runs",
        [
            "clients",
            "path",
            "requests/s",
            "passages/s",
            "p50 latency s",
            "p95 latency s",
            "wall min-max s",
            "engine admissions",
            "throughput vs direct",
        ],
        rows,
        note="Each client sends its requests one after another; 'throughput vs direct' is the median over rounds "
        "of direct wall / API wall. p50/p95 over every request of the timed rounds. 'engine admissions' (median): "
        "times the engine loop added newly arrived requests to its running batch. The API's clients run in a "
        "separate process; the server (uvicorn, one event loop) shares this process with the engine's driver "
        f"thread. Lowest API share over the levels: {worst:.3f}.",
    )
    report.table(
        "The app's own time per request (outside reranker.ajudge)",
        ["clients", "ms per request", "share of the app's request time"],
        app_rows,
        note="From the app's Prometheus histograms: request duration minus judge duration, per request (median over "
        "runs): validation, cache keys, sharing, response JSON, and waiting for the event loop. HTTP transport "
        "and the client are outside it (they are in the throughput comparison above).",
    )
    report.write()


if __name__ == "__main__":
    main()
