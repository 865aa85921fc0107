"""Remote backend throughput: async judging against one and two vLLM servers at rising concurrency,
then the embedded engine on the same model.

Starts loopback CPU vLLM servers (OpenAI-compatible, each in its own process, vLLM's
default multiprocessing), times ``ajudge`` at each ``max_concurrency`` and prompt-building
mode (``--tokenizers``: a checked local copy of the server's tokenizer, or the server's
``/tokenize``), against the first server alone and against all of them, interleaved and
rotated every round; then stops the servers and times the embedded engine, so the two
never share the machine. Every run judges fresh passages (no tokenizer cache can hide a
round trip). Each remote row also says where the time went: CPU seconds of this client
process and of the servers' processes (API server and engine) per run.
With ``--server URL`` it measures an already running server (e.g. a GPU box) and skips
the embedded side.

    python -m bench.remote_throughput                            # random model, 1 and 2 servers
    python -m bench.remote_throughput --servers 1 --concurrency 32 --tokenizers local,server
    python -m bench.remote_throughput --server http://gpu-box:8000/v1 --model jhu-clsp/rank1-7b
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from bench._common import (
    CACHE,
    Report,
    Sample,
    add_common_args,
    engine_kwargs,
    finish_args,
    interleaved,
    load_reranker,
    make_passages,
    make_queries,
    median,
    model_path,
)


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on a free loopback port, CPU settings."""

    def __init__(self, model: str, args: argparse.Namespace, index: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = dict(os.environ)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server runs as vLLM ships it
        env.update(item.split("=", 1) for item in args.server_env)
        CACHE.mkdir(parents=True, exist_ok=True)
        self.log = (CACHE / f"remote-server-{index}.log").open("wb")
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--seed", str(args.seed)]
        command += ["--max-model-len", str(args.max_model_len), "--enable-tokenizer-info-endpoint"]
        for key, value in engine_kwargs(args).items():
            if key in ("enforce_eager",) and value:
                command.append("--enforce-eager")
            elif key == "dtype":
                command += ["--dtype", str(value)]
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 600) -> Server:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"vLLM server exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"vLLM server not healthy after {timeout:.0f} s; see {self.log.name}")
            time.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU time so far of the server and its engine process."""
        import psutil  # type: ignore[import-untyped,unused-ignore]

        try:
            root = psutil.Process(self.process.pid)
            return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return float("nan")

    def rss_mib(self) -> float:
        """Resident memory of the server and its engine process."""
        import psutil  # type: ignore[import-untyped,unused-ignore]

        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in processes) / 2**20
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--servers", default="1,2", help="server counts to compare, e.g. 1,2 (loopback replicas)")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated max_concurrency levels")
    parser.add_argument(
        "--tokenizers",
        default="local,server",
        help="prompt building to compare: 'local' (a checked local copy of the server's tokenizer), 'server' "
        "(one /tokenize round trip per new text)",
    )
    parser.add_argument("--server", help="an already running server's base URL (then --model is its served name)")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-engine comparison")
    parser.add_argument(
        "--prompts-per-request", type=int, default=1, help="prompts per /v1/completions request (the backend's setting)"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the servers, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU=0: on CPU a vLLM server keeps one "
        "core for its scheduler and computes on the others, while the embedded engine computes on all",
    )
    args = parser.parse_args(argv)
    if args.passages is None:
        args.passages = 64
    args = finish_args(args)
    report = Report("remote_throughput", "Remote backend: async throughput vs concurrency, 1 and 2 servers", args)

    from rank1_integrations import Rank1Reranker
    from rank1_integrations.backends.remote.backend import RemoteBackend

    query = make_queries(1, seed=args.seed)[0]
    rounds = iter(range(10**9))

    def fresh_passages() -> list[str]:
        return make_passages(args.passages, args.passage_words, seed=args.seed, tag=f"remote{next(rounds)}-")

    counts = [1] if args.server else [int(n) for n in args.servers.split(",")]
    levels = [int(n) for n in args.concurrency.split(",")]
    modes = args.tokenizers.split(",")
    model = args.model if args.server else model_path(args.model)
    servers: list[Server] = []
    loop = asyncio.new_event_loop()
    remote: dict[str, list[Sample]] = {}
    server_rss: dict[int, float] = {}
    scores: list[float | None] = []
    try:
        if not args.server:
            started = time.perf_counter()
            servers = [Server(model, args, i) for i in range(max(counts))]
            for server in servers:
                server.wait_ready()
            print(f"{len(servers)} server(s) ready in {time.perf_counter() - started:.0f} s", flush=True)
        urls = [args.server] if args.server else [s.base_url for s in servers]
        backends: list[RemoteBackend] = []

        def variant(count: int, level: int, mode: str) -> Callable[[], Any]:
            backend = RemoteBackend(
                urls[:count],
                model,
                max_concurrency=level,
                tokenizer=None if mode == "local" else mode,
                prompts_per_request=args.prompts_per_request,
            )
            if mode == "local" and type(backend.tokenizer).__name__ == "RemoteTokenizer":
                raise SystemExit("no local copy of the served model's tokenizer could be checked and used")
            backends.append(backend)
            reranker = Rank1Reranker(backend, max_reasoning_tokens=args.budget, cache=False)

            def run() -> tuple[list[Any], float, float, list[Any]]:
                passages = fresh_passages()
                client, served = time.process_time(), sum(s.cpu_seconds() for s in servers)
                judgments = loop.run_until_complete(reranker.ajudge(query, passages))
                client, served = time.process_time() - client, sum(s.cpu_seconds() for s in servers) - served
                return judgments, client, served, passages

            return run

        variants = {
            f"{count} server{'s' if count > 1 else ''}, max_concurrency {level}, {mode} tokenizer": variant(
                count, level, mode
            )
            for count in counts
            for level in levels
            for mode in modes
        }
        remote = interleaved(
            variants, runs=args.runs, warmup=args.warmup, extra=lambda _, r: {"client_cpu": r[1], "server_cpu": r[2]}
        )
        server_rss = {i: s.rss_mib() for i, s in enumerate(servers)}
        last_judgments, _, _, last_passages = next(iter(remote.values()))[-1].result
        scores = [j.score for j in last_judgments]
        for backend in backends:
            backend.close()
    finally:
        for server in servers:
            server.stop()  # the embedded engine gets the machine to itself
        loop.close()

    embedded: list[Sample] = []
    if not (args.no_embedded or args.server):
        reranker = load_reranker(args, cache=False)
        report.set_engine(reranker.backend.llm)  # type: ignore[attr-defined]
        embedded = interleaved(
            {"embedded": lambda: reranker.judge(query, fresh_passages())}, runs=args.runs, warmup=args.warmup
        )["embedded"]
        ours = [j.score for j in reranker.judge(query, last_passages)]
        diffs = [abs(a - b) for a, b in zip(scores, ours, strict=True) if a is not None and b is not None]
        report.check(
            "remote scores equal the embedded engine's (1e-4)",
            bool(diffs) and max(diffs) < 1e-4,
            f"{len(diffs)} compared, max abs difference {max(diffs, default=float('nan')):.2e}",
        )
    embedded_s = median([s.seconds for s in embedded]) if embedded else float("nan")

    count_of_passages = args.passages
    rows = []
    for name, runs in remote.items():
        wall = median([s.seconds for s in runs])
        count = int(name.split()[0])
        rss = sum(server_rss.get(i, float("nan")) for i in range(count))
        rows.append(
            [
                name,
                f"{wall:.3f}",
                f"{min(s.seconds for s in runs):.3f}-{max(s.seconds for s in runs):.3f}",
                f"{count_of_passages / wall:.1f}",
                f"{embedded_s / wall:.2f}" if embedded else "-",
                f"{median([s.extra['client_cpu'] for s in runs]):.2f}",
                f"{median([s.extra['server_cpu'] for s in runs]):.2f}",
                f"{max(s.peak_rss_mib for s in runs):.0f}",
                f"{rss:.0f}",
            ]
        )
    if embedded:
        rows.append(
            [
                "embedded engine (one judge call)",
                f"{embedded_s:.3f}",
                f"{min(s.seconds for s in embedded):.3f}-{max(s.seconds for s in embedded):.3f}",
                f"{count_of_passages / embedded_s:.1f}",
                "1.00",
                "-",
                "-",
                f"{max(s.peak_rss_mib for s in embedded):.0f}",
                "-",
            ]
        )
    report.table(
        f"ajudge of {count_of_passages} fresh passages per run, budget {args.budget}, median of {args.runs} runs",
        [
            "backend",
            "median s",
            "min-max s",
            "passages/s",
            "throughput vs embedded",
            "client CPU s/run",
            "server CPU s/run",
            "client peak RSS MiB",
            "server RSS MiB",
        ],
        rows,
        note="Remote variants ran interleaved with the servers up; the embedded engine ran after they were "
        "stopped. 'client CPU' is this process's CPU time during a run (building prompts, HTTP, JSON); "
        "'server CPU' is the servers' (API process and engine process) CPU time during it; on a machine "
        "with fewer cores than busy threads the two compete, and the wall time is about their sum. "
        "'client peak RSS' is this process (monotonic: the embedded row includes its engine); "
        "'server RSS' sums the servers used, after the runs.",
    )
    report.write()


if __name__ == "__main__":
    main()
