"""A chatbot that answers fast: no-think scores pick its sources, then rank1 reasons on the ones it cites.

rank1's cost is its reasoning. This chat turn spends it only where a user will look:

1. BM25 retrieves ``--k`` chunks; rank1 scores every one **without reasoning**
   (``reasoning_effort="none"``: one prefill per chunk, no generated tokens, one engine batch).
2. The best ``--top-n`` become the sources and the answer LLM answers at once, citing ``[n]``.
3. Then rank1 **reasons** (``reasoning_effort="full"``) on the sources the answer cites, each
   verdict streamed as soon as it is final, so the chat can show *why* a source was used, and
   flag one that full reasoning rejects.

Run: ``python cookbook/10_fast_answers.py [--model jhu-clsp/rank1-7b] [--question ...]``.
"""

from __future__ import annotations

import re
import sys
import textwrap
import time
from collections.abc import Sequence

from _llms import add_rag_options, answer_backend, reranker_for
from _shared import BM25, parser, resolve, stdlib_corpus, verdict

QUESTION = "How do I turn a Python dict into a JSON string?"
PROMPT = (
    "Answer the question using only the numbered sources; cite each source you use as [n].\n\n"
    "{sources}\n\nQuestion: {question}\nAnswer:"
)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_rag_options(p, QUESTION)
    args = p.parse_args(argv)
    setup = resolve(args)
    reranker = reranker_for(args, setup)
    chat = answer_backend(args, setup, reranker)

    started = time.perf_counter()
    chunks = [chunk for chunk, _ in BM25(stdlib_corpus()).search(args.question, k=args.k)]
    quick = reranker.judge(args.question, [c.text for c in chunks], reasoning_effort="none")
    ranked = sorted(quick, key=lambda j: j.score or 0.0, reverse=True)[: args.top_n]
    sources = [chunks[j.index] for j in ranked]
    print(f"\nScored {len(chunks)} chunks without reasoning in {time.perf_counter() - started:.2f}s", flush=True)
    for number, (chunk, judgment) in enumerate(zip(sources, ranked, strict=True), start=1):
        print(f"  [{number}] {chunk.source}: no-think score {judgment.score:.3f}, {judgment.reasoning_tokens} tokens")

    listing = "\n".join(f"[{n}] {c.text}" for n, c in enumerate(sources, start=1))
    answer = chat.chat(
        [{"role": "user", "content": PROMPT.format(sources=listing, question=args.question)}],
        max_tokens=args.max_answer_tokens,
    )
    print(f"\nAnswer after {time.perf_counter() - started:.2f}s:")
    print(textwrap.fill(" ".join(answer.split()) or "(empty)", 100, initial_indent="  ", subsequent_indent="  "))

    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", answer) if 1 <= int(n) <= len(sources)})
    checked = cited or list(range(1, len(sources) + 1))  # nothing cited: explain every source shown
    print(f"\nrank1 reasons on {'the cited' if cited else 'every'} source ({len(checked)} of {len(chunks)} chunks):")
    texts = [sources[n - 1].text for n in checked]
    for judgment in reranker.judge_iter(args.question, texts, reasoning_effort="full"):
        number = checked[judgment.index]
        flag = "" if judgment.relevant else "  <- full reasoning rejects this source"
        elapsed = time.perf_counter() - started
        print(f"  +{elapsed:6.2f}s [{number}] {sources[number - 1].source}: {verdict(judgment)}{flag}")
        print(f"      why (rank1, {judgment.reasoning_tokens} tokens): {judgment.rationale or '(no reasoning)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
