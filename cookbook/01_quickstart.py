"""Quickstart: rerank a handful of passages for one query; print score, verdict and reasoning.

The passages are documentation strings of the Python standard library, read at run time.
The heart of it, on a GPU::

    from rank1_integrations import Rank1Reranker

    reranker = Rank1Reranker.from_vllm("jhu-clsp/rank1-7b")
    for j in reranker.judge(query, passages):
        print(j.score, j.relevant, j.reasoning)

Run: ``python cookbook/01_quickstart.py [--model jhu-clsp/rank1-7b] [--query ...]``. Where the
rank1 model cannot be had (no hub, not cached) it runs on SmolLM2-135M-Instruct, which is
not rank1 (see the first lines of the output).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

from _shared import first_chunks, parser, resolve, verdict

QUERY = "How do I run a shell command from Python and capture what it prints?"
SOURCES = ("subprocess.run", "subprocess.check_output", "shlex.split", "time.sleep", "json.dumps")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--query", default=QUERY)
    args = p.parse_args(argv)
    setup = resolve(args)
    reranker = setup.reranker()

    chunks = first_chunks(SOURCES)
    judgments = reranker.judge(args.query, [c.text for c in chunks])  # one engine batch

    print(f"\nQuery: {args.query}\n")
    for j in sorted(judgments, key=lambda j: j.score or 0.0, reverse=True):
        print(f"[{chunks[j.index].source}] {verdict(j)}, {j.reasoning_tokens} reasoning tokens")
        print(
            "    reasoning:", textwrap.fill(" ".join(j.reasoning.split()) or "(none)", 100, subsequent_indent="      ")
        )
        print(f"    in short: {j.rationale or '(none)'}\n")  # rank1's conclusion, quoted
    return 0


if __name__ == "__main__":
    sys.exit(main())
