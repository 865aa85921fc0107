"""Fake vLLM servers for the batch scaling benchmark: a fixed latency per request and a fixed capacity.

``python -m bench._fake_vllm --servers 16 --latency 1.0 --capacity 4`` starts that many
OpenAI-compatible servers on loopback ports in this one process (asyncio + aiohttp),
prints one JSON line with their base URLs, and serves until stdin closes.

Each server answers ``/v1/models`` and ``/v1/completions`` the way vLLM does for rank1's
requests (token ids, label log-probabilities by ``token_id:N`` key, a stop string), after
``latency`` seconds, with at most ``capacity`` requests in progress (more wait, as in
vLLM's scheduler queue). One server thus completes ``capacity / latency`` requests a
second whatever the machine, so what is measured is the client's distribution logic.
``GET /stats`` says how many requests a server completed and for how long it was busy.
Scores are a hash of the prompt: deterministic, and varied.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

MODEL = "fake-rank1"
REASONING_TOKEN = 100
"""An id of the test tokenizer's vocabulary: every reasoning token is this one."""


def _answer(prompt: Sequence[int], labels: Sequence[int], reasoning_tokens: int, reasoning: str) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(list(prompt)).encode()).digest()
    true_logprob = -0.05 - digest[0] / 64.0
    false_logprob = -0.05 - digest[1] / 64.0
    label = labels[0] if true_logprob >= false_logprob else labels[1]
    ids = [REASONING_TOKEN] * reasoning_tokens + [label]
    top = [{f"token_id:{REASONING_TOKEN}": -0.1} for _ in range(reasoning_tokens)]
    top.append({f"token_id:{labels[0]}": true_logprob, f"token_id:{labels[1]}": false_logprob})
    return {
        "text": reasoning,
        "token_ids": ids,
        "finish_reason": "stop",
        "stop_reason": "</think> true" if label == labels[0] else "</think> false",
        "logprobs": {"tokens": [f"token_id:{t}" for t in ids], "top_logprobs": top},
    }


def app(latency: float, capacity: int, reasoning_tokens: int, reasoning_chars: int) -> web.Application:
    slots = asyncio.Semaphore(capacity)
    stats = {"requests": 0, "busy_seconds": 0.0}
    reasoning = ("The passage answers the query. " * (reasoning_chars // 31 + 1))[:reasoning_chars]

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "max_model_len": 4096}]})

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        labels = body["logprob_token_ids"]
        async with slots:
            await asyncio.sleep(latency)
            stats["requests"] += 1
            stats["busy_seconds"] += latency
        prompts = body["prompt"]
        choices = [{"index": i, **_answer(p, labels, reasoning_tokens, reasoning)} for i, p in enumerate(prompts)]
        return web.json_response({"id": "fake", "object": "text_completion", "model": MODEL, "choices": choices})

    async def report(_: web.Request) -> web.Response:
        return web.json_response(stats)

    application = web.Application()
    application.add_routes(
        [web.get("/v1/models", models), web.post("/v1/completions", completions), web.get("/stats", report)]
    )
    return application


async def serve(args: argparse.Namespace) -> None:
    runners = []
    urls = []
    for _ in range(args.servers):
        runner = web.AppRunner(app(args.latency, args.capacity, args.reasoning_tokens, args.reasoning_chars))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        urls.append(f"http://127.0.0.1:{port}/v1")
        runners.append(runner)
    print(json.dumps({"urls": urls}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for runner in runners:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds each request takes")
    parser.add_argument("--capacity", type=int, default=4, help="requests each server works on at once")
    parser.add_argument("--reasoning-tokens", type=int, default=8)
    parser.add_argument("--reasoning-chars", type=int, default=400)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
