"""Custom relevance definitions: the paper's dataset prompts and your own template change rank1's verdicts.

rank1 judges "relevant" strictly by default (the passage must answer the query). The paper
(Table 10) wraps the query in a dataset-specific definition; a template is text with
``FILL_QUERY_HERE`` where the query goes, given to the reranker (``template=``), to one call
(``judge(..., template=...)``) or to an adapter (``Rank1Rerank(template=...)``). A looser
definition turns over-strict "false" verdicts into "true" for passages that help with part
of the task. ``DATASET_PROMPTS`` holds the paper's prompts by dataset name.

This judges the same passages under several definitions and shows which verdicts change.
With the offline stand-in (SmolLM2, not rank1) the changes are noise; run it with
``--model jhu-clsp/rank1-7b`` on a GPU to see rank1's own behaviour.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

from _shared import first_chunks, parser, resolve, verdict

from rank1_integrations import DATASET_PROMPTS
from rank1_integrations.core.templates import apply_template, resolve_template

QUERY = "How do I measure how long a piece of my code takes to run?"
SOURCES = ("time.perf_counter", "time.sleep", "datetime.timedelta", "statistics.median")
USER_TEMPLATE = (
    "I am writing Python code for this task: FILL_QUERY_HERE\n\n"
    "A passage is relevant if it documents a function, class or option that I could use for any part "
    "of the task, even if it does not solve the whole task by itself."
)
DEFINITIONS: dict[str, str | None] = {
    "none (rank1's plain prompt)": None,
    "paper: TRECCOVID": "TRECCOVID",
    "paper: NFCorpus": "NFCorpus",
    "yours (USER_TEMPLATE)": USER_TEMPLATE,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--query", default=QUERY)
    p.add_argument("--template", action="append", metavar="T", help="more definitions: FILL_QUERY_HERE text or a name")
    args = p.parse_args(argv)
    definitions = dict(DEFINITIONS)
    for i, extra in enumerate(args.template or [], start=1):
        resolve_template(extra)  # a bad template fails here, before any engine starts
        definitions[f"--template {i}"] = extra
    setup = resolve(args)
    reranker = setup.reranker()
    chunks = first_chunks(SOURCES)
    texts = [c.text for c in chunks]

    print(f"\nQuery: {args.query}\nThe paper's dataset prompts: {', '.join(DATASET_PROMPTS)}")
    results = {}
    for name, template in definitions.items():
        shown = apply_template(resolve_template(template), args.query)
        print(f"\n-- definition: {name}\n{textwrap.indent(shown, '   | ', lambda _: True)}")
        results[name] = reranker.judge(args.query, texts, template=template)
        for chunk, j in zip(chunks, results[name], strict=True):
            print(f"   {chunk.source:<20} {verdict(j)}")

    print("\nAgainst rank1's plain prompt:")
    base = results[next(iter(definitions))]
    changes = 0
    for name, judgments in results.items():
        mean = sum(j.score or 0.0 for j in judgments) / len(judgments)
        print(f"   {name}: {sum(bool(j.relevant) for j in judgments)} relevant, mean score {mean:.3f}")
        for chunk, before, after in zip(chunks, base, judgments, strict=True):
            if before.relevant != after.relevant:
                changes += 1
                print(f"      {chunk.source}: {before.relevant} -> {after.relevant} (score {after.score:.3f})")
    print(f"   {changes} verdict(s) changed")

    example = reranker.build_prompt(args.query, texts[0], template=USER_TEMPLATE)
    print(f"\nThe exact prompt rank1 reads with your template ({len(example.token_ids)} tokens):")
    print(textwrap.indent(example.text, "   | ", lambda _: True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
