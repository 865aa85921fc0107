"""Remote backend throughput: async judging against one vLLM server at increasing concurrency,
then the embedded engine on the same model and passages, and the ratio.

A benchmark, not a test: it prints figures and asserts nothing about speed. By default it
builds (or reuses) the tiny random test model, starts a CPU vLLM server on loopback,
and stops it before timing the embedded engine, so the two never share the machine.

    python -m bench.remote_throughput                        # tiny random model, 64 passages
    python -m bench.remote_throughput --servers 2           # two replicas behind one client
    python -m bench.remote_throughput --model PATH --budget 256 --concurrency 1,8,32
    python -m bench.remote_throughput --server http://gpu-box:8000/v1 --model MODEL_NAME --no-embedded
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
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
_CACHE = Path(os.environ.get("RANK1_TEST_CACHE", _REPO / ".cache" / "tests"))

for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

QUERY = "what does the len function return"
BASE_PASSAGES = (
    "Return the length (the number of items) of an object. The argument may be a sequence or a collection.",
    "The sorted function returns a new sorted list from the items in an iterable.",
    "Open file and return a corresponding file object. If the file cannot be opened, an OSError is raised.",
    "Return a string which is the concatenation of the strings in iterable.",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="'random' (default) or 'scripted' (tiny test models) or a model path; with --server its name"
    )
    parser.add_argument("--server", help="an already running server's base URL (then --model is its served name)")
    parser.add_argument("--servers", type=int, default=1, help="how many loopback replicas to start and spread over")
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--budget", type=int, default=64, help="max_reasoning_tokens")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma-separated max_concurrency levels")
    parser.add_argument("--prompts-per-request", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-engine comparison")
    return parser.parse_args(argv)


def model_path(name: str) -> str:
    from rank1_integrations.testing.tiny_models import build_random_model, build_scripted_model

    if name == "random":
        return str(build_random_model(_CACHE / "random"))
    if name == "scripted":
        return str(build_scripted_model(_CACHE / "scripted"))
    return name


def passages(count: int) -> list[str]:
    # Distinct passages (no prefix-cache shortcuts between them), same for both backends.
    return [f"{BASE_PASSAGES[i % len(BASE_PASSAGES)]} (copy {i})" for i in range(count)]


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on a free loopback port, CPU settings."""

    def __init__(self, model: str, max_model_len: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = dict(os.environ)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        self.log = (_CACHE / "bench-vllm-server.log").open("wb")
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--enforce-eager"]
        command += ["--max-model-len", str(max_model_len), "--seed", "0", "--enable-tokenizer-info-endpoint"]
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"vLLM server exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"vLLM server not healthy after 300 s; see {self.log.name}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


async def remote_levels(
    url: str | list[str], model: str | None, texts: list[str], args: argparse.Namespace
) -> list[Any]:
    from rank1_integrations import Rank1Reranker
    from rank1_integrations.backends.remote import RemoteBackend

    levels = [int(level) for level in args.concurrency.split(",")]
    rows = []
    warm = Rank1Reranker.from_server(url, model, max_reasoning_tokens=args.budget)
    await warm.ajudge(QUERY, texts[:2])
    warm.backend.close()
    for level in levels:
        backend = RemoteBackend(url, model, max_concurrency=level, prompts_per_request=args.prompts_per_request)
        reranker = Rank1Reranker(backend, max_reasoning_tokens=args.budget)
        started = time.perf_counter()
        judgments = await reranker.ajudge(QUERY, texts)
        elapsed = time.perf_counter() - started
        await backend.aclose()
        judged = sum(j.judged for j in judgments)
        rows.append((level, elapsed, judged, judgments))
        print(
            f"remote async  max_concurrency {level:>3}: {elapsed:7.2f} s  {len(texts) / elapsed:7.2f} passages/s"
            f"  ({judged}/{len(texts)} judged)",
            flush=True,
        )
    return rows


def embedded(model: str, texts: list[str], args: argparse.Namespace) -> tuple[float, list[Any]]:
    from rank1_integrations import Rank1Reranker

    reranker = Rank1Reranker.from_vllm(
        model,
        max_reasoning_tokens=args.budget,
        enforce_eager=True,
        dtype="float32",
        max_model_len=args.max_model_len,
        seed=0,
    )
    reranker.judge(QUERY, texts[:2])  # warm-up
    started = time.perf_counter()
    judgments = reranker.judge(QUERY, texts)
    elapsed = time.perf_counter() - started
    print(f"embedded engine (one batch)  : {elapsed:7.2f} s  {len(texts) / elapsed:7.2f} passages/s", flush=True)
    return elapsed, judgments


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    texts = passages(args.passages)
    _CACHE.mkdir(parents=True, exist_ok=True)
    model = args.model if args.server else model_path(args.model or "random")
    print(f"model {model}, {len(texts)} passages, reasoning budget {args.budget}, {os.cpu_count()} CPUs", flush=True)
    servers = [] if args.server else [Server(model, args.max_model_len) for _ in range(args.servers)]
    url: str | list[str] = args.server or [server.base_url for server in servers]
    print(f"remote: {len(servers) or 1} server(s)", flush=True)
    try:
        rows = asyncio.run(remote_levels(url, model, texts, args))
    finally:
        for server in servers:
            server.stop()  # the embedded engine gets the machine to itself
    best = min(rows, key=lambda row: row[1])
    print(f"best remote: max_concurrency {best[0]}, {len(texts) / best[1]:.2f} passages/s")
    if args.no_embedded or args.server:
        return
    elapsed, reference = embedded(model, texts, args)
    for level, remote_elapsed, _, _ in rows:
        print(f"ratio remote(max_concurrency {level:>3}) / embedded throughput: {elapsed / remote_elapsed:5.2f}")
    diffs = [
        abs(r.score - e.score)
        for r, e in zip(best[3], reference, strict=True)
        if r.score is not None and e.score is not None
    ]
    print(f"max |score difference| best remote vs embedded: {max(diffs, default=float('nan')):.2e}")


if __name__ == "__main__":
    main()
