"""``rank1 serve``: rank1 behind the rerank APIs (docs/serving.md), on an engine or in front of vLLM servers."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable

from rank1_integrations._optional import require
from rank1_integrations.cli.models import prepare_engine
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.settings import Rank1Settings

__all__ = ["DEFAULT_API_KEY_ENV", "add_arguments", "command"]

DEFAULT_API_KEY_ENV = "RANK1_SERVE_API_KEY"
"""Read for the clients' API key when ``--serve-api-key-env`` is not given (unset: no key checked)."""


def _number(convert: Callable[[str], float], least: float, most: float = math.inf) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)  # a ValueError: argparse says "invalid int value: 'x'"
        if not (math.isfinite(value) and least <= value <= most):
            bounds = f">= {least:g}" if most == math.inf else f"from {least:g} to {most:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rank1_integrations.serve import DEFAULT_DISCONNECT_GRACE, Limits

    own = parser.add_argument_group("serve")
    own.add_argument(
        "--model-name",
        action="append",
        type=_name,
        metavar="NAME",
        help="a name clients may ask for (repeat; default: --model); the first is reported",
    )
    own.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    own.add_argument("--port", type=_number(int, 1, 65535), default=8080)
    own.add_argument(
        "--serve-api-key-env",
        metavar="VAR",
        help=f"variable holding the key clients send as 'Authorization: Bearer KEY' "
        f"(default: {DEFAULT_API_KEY_ENV}, when set)",
    )
    own.add_argument("--max-documents", type=_number(int, 1), default=Limits.max_documents, help="per request")
    own.add_argument(
        "--max-characters", type=_number(int, 1), default=Limits.max_characters, help="query + documents, per request"
    )
    own.add_argument(
        "--max-body-bytes",
        type=_number(int, 1),
        default=0,
        help="refused unread above (default: 6 x characters + 64 x documents + 1 MiB)",
    )
    own.add_argument(
        "--disconnect-grace",
        type=_number(float, 0),
        default=DEFAULT_DISCONNECT_GRACE,
        help="seconds a judgment runs on after its last client left, so a retry can join it",
    )
    own.add_argument(
        "--grace-period",
        type=_number(float, 0),
        default=30.0,
        help="seconds SIGTERM waits for running requests before answering them 503",
    )
    own.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def command(args: argparse.Namespace, settings: Rank1Settings) -> int:
    from rank1_integrations.reranker import Rank1Reranker
    from rank1_integrations.serve import Limits, create_app

    uvicorn = require("uvicorn", extras=("serve",), purpose="rank1 serve")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    key = (os.environ.get(args.serve_api_key_env or DEFAULT_API_KEY_ENV) or "").strip()
    if args.serve_api_key_env is not None and not key:
        raise InvalidInputError(f"--serve-api-key-env {args.serve_api_key_env}: that variable is not set (or blank)")
    if settings.embedded and settings.model is None:
        raise InvalidInputError("model: give the model to serve (--model), or vLLM servers (--server URL)")
    limits = Limits(args.max_documents, args.max_characters, args.max_body_bytes)
    reranker = Rank1Reranker.from_settings(prepare_engine(settings))
    names = args.model_name or [settings.model or reranker.backend.model_name]
    grace = args.disconnect_grace
    app = create_app(
        reranker, served_model_names=names, api_key=key, limits=limits, disconnect_grace=grace, owns_reranker=True
    )
    logging.getLogger("rank1_integrations.serve").info("serving %r as %s", reranker, ", ".join(names))
    # uvicorn handles SIGTERM: running requests get the grace period, the app shuts down (closing the reranker).
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.grace_period
    )
    return 0
