"""``rank1 rerank``: one query against passages (flags, a file or stdin), on an engine or servers."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import textwrap
from pathlib import Path

from rank1_integrations.cli.models import default_model, on_cpu, prepare_engine
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.settings import Rank1Settings

__all__ = ["DEFAULT_QUERY", "add_arguments", "command", "default_passages"]

DEFAULT_QUERY = "How do I sort a list in Python without changing the original list?"
FIELDS = ("index", "score", "relevant", "forced", "reasoning_tokens", "truncated", "reasoning", "error")
SMALL_BUDGET = 48  # on CPU or the offline stand-in: enough to see reasoning, small enough to finish soon


def default_passages() -> list[str]:
    """Docstrings of Python built-ins, read at run time: two answer the default query, three do not."""
    objects = (len, sorted, str.join, list.sort, reversed)
    return [f"{obj.__qualname__}(): {inspect.getdoc(obj) or ''}".strip() for obj in objects]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query", default=DEFAULT_QUERY, help="the query (default: a built-in one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--passage", action="append", metavar="TEXT", help="a passage; repeat for more")
    source.add_argument(
        "--passages-file", metavar="PATH", help="passages, one per line or JSONL with 'text' ('-': stdin)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per passage instead of a table")


def _passages(args: argparse.Namespace) -> list[str]:
    if args.passage:
        return list(args.passage)
    if args.passages_file is None:
        return default_passages()
    text = sys.stdin.read() if args.passages_file == "-" else Path(args.passages_file).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        return [str(json.loads(line)["text"]) if line.startswith("{") else line for line in lines]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"--passages-file: a JSON line needs a 'text' field ({error})") from None


def _choose(settings: Rank1Settings) -> Rank1Settings:
    """rank1-0.5b (or the offline stand-in) where no model or servers are given; small budgets on CPU."""
    given, small = settings.model_fields_set, False
    if settings.embedded and settings.model is None:
        model, why, small = default_model()
        print(f"Model: {why}", file=sys.stderr)
        settings = settings.replace(model=model)
    settings = prepare_engine(settings)
    small = small or (settings.embedded and on_cpu())
    changes: dict[str, object] = {"on_failure": "mark_unjudged", "progress": True}
    if small:
        changes["max_reasoning_tokens"] = SMALL_BUDGET
        if "max_model_len" not in settings.engine_args:
            changes["context_size"] = 2048
    return settings.replace(**{name: value for name, value in changes.items() if name not in given})


def command(args: argparse.Namespace, settings: Rank1Settings) -> int:
    from rank1_integrations.reranker import Rank1Reranker

    passages = _passages(args)
    if not passages:
        raise InvalidInputError("no passages to rerank")
    settings = _choose(settings)
    with Rank1Reranker.from_settings(settings) as reranker:
        print(f"Reranking with {reranker!r}", file=sys.stderr)
        judgments = reranker.judge(args.query, passages)
    ranked = sorted(judgments, key=lambda j: -1.0 if j.score is None else j.score, reverse=True)
    for rank, judgment in enumerate(ranked, start=1):
        passage = passages[judgment.index]
        if args.json:
            record = {"rank": rank, **{name: getattr(judgment, name) for name in FIELDS}}
            print(json.dumps({**record, "passage": passage, "model": settings.model}, ensure_ascii=False))
        else:
            _print(rank, judgment, passage)
    return 0 if all(j.judged for j in judgments) else 1


def _print(rank: int, j: Judgment, passage: str) -> None:
    score = "  n/a" if j.score is None else f"{j.score:.3f}"
    verdict = "unjudged" if j.relevant is None else "relevant" if j.relevant else "not relevant"
    print(f"{rank:>3}. [{j.index + 1}] score {score}  {verdict}  reasoning tokens {j.reasoning_tokens}")
    print(textwrap.shorten(passage, 96, placeholder=" ...").join(["     passage: ", ""]))
    print(textwrap.indent(textwrap.fill(" ".join(j.reasoning.split()) or "(none)", 92), "     | "))
    if j.error:
        print(f"     error: {j.error}")
