"""``rank1``: one command, three subcommands, one settings vocabulary (``Rank1Settings``).

``rank1 rerank`` (a query against passages), ``rank1 serve`` (the rerank APIs over HTTP) and
``rank1 run`` (a whole TREC run, resumably). Their shared flags are the settings' fields.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rank1_integrations.cli.options import parse
from rank1_integrations.errors import InvalidInputError, Rank1Error

__all__ = ["main"]

COMMANDS = {
    "rerank": "rerank a query's passages and show why (default: a built-in example, offline)",
    "serve": "serve the rerank APIs (Cohere, Jina/vLLM) over HTTP",
    "run": "rerank a whole TREC run, resumably, on one machine or on Ray",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rank1``; returns the exit status (0 done, 1 failed, 2 bad input or options)."""
    argv, raw = list(sys.argv[1:] if argv is None else argv), argparse.RawDescriptionHelpFormatter
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="rank1", description=__doc__, formatter_class=raw)
        top.add_argument("command", choices=COMMANDS, help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
        top.parse_args(argv[:1])  # --help exits 0; no command or an unknown one exits 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"rank1_integrations.cli.{name}")
    usage = f"rank1 {name} [options]"
    parser = argparse.ArgumentParser(prog=f"rank1 {name}", usage=usage, description=module.__doc__, formatter_class=raw)
    try:
        module.add_arguments(parser)  # serve's need the serve extra
        args, settings = parse(parser, rest, name if name != "rerank" else None)
        status: int = module.command(args, settings)
    except (Rank1Error, OSError) as error:  # bad input or a file that cannot be read: 2
        failed = isinstance(error, Rank1Error) and not isinstance(error, InvalidInputError)  # StorageError: resumable
        print(f"rank1 {name}: error: {type(error).__name__ + ': ' if failed else ''}{error}", file=sys.stderr)
        return 1 if failed else 2
    return status
