"""Streaming sources: show each source as soon as rank1 has judged it, not when the slowest is done.

rank1's reasoning lengths differ several-fold between passages, so a chat UI that waits for
the whole rerank waits for the longest one. Three ways to stream, on one engine::

    # the core: each Judgment as soon as it is final (forced answers included)
    async for j in reranker.ajudge_stream(query, passages):
        show(passages[j.index], j.score, j.rationale)

    # LangChain: the compressor announces each judged document as a custom event
    async for event in retriever.astream_events(question, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == "rank1_judgment":
            show(event["data"]["document"])          # a copy with the rank1_* metadata

    # LlamaIndex: a Rank1JudgmentEvent per judged node on the instrumentation dispatcher
    class ShowSources(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, Rank1JudgmentEvent):
                show(event.node)

The final list (top_n, min_keep, best first) still needs every judgment: streamed sources
carry ``rank1_kept_by = None`` until then. Leaving an ``ajudge_stream`` loop early aborts
the passages still reasoning.

Offline the reranker is SmolLM2-135M-Instruct (not rank1). With a GPU: ``--model jhu-clsp/rank1-7b``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from _shared import BM25, parser, resolve, stdlib_corpus, verdict

from rank1_integrations import Rank1Reranker

QUESTION = "How do I run a shell command from Python and capture what it prints?"


def line(elapsed: float, source: str, metadata: dict[str, Any]) -> str:
    score, relevant = metadata["relevance_score"], metadata["rank1_relevant"]
    judged = "unjudged" if score is None else f"{'relevant' if relevant else 'not relevant'} {score:.3f}"
    return f"  +{elapsed:5.2f}s  {source:<34} {judged}: {metadata['rank1_rationale'] or '(no reasoning)'}"


async def core(reranker: Rank1Reranker, question: str, chunks: Sequence[Any]) -> None:
    print("\n== Rank1Reranker.ajudge_stream: judgments as they are final")
    start = time.perf_counter()
    async for j in reranker.ajudge_stream(question, [c.text for c in chunks]):
        print(f"  +{time.perf_counter() - start:5.2f}s  {chunks[j.index].source:<34} {verdict(j)}")


async def langchain(reranker: Rank1Reranker, question: str, index: BM25, k: int, top_n: int) -> None:
    from _langchain_parts import BM25Retriever
    from langchain_classic.retrievers import ContextualCompressionRetriever

    from rank1_integrations.adapters.langchain import Rank1Rerank

    print("\n== LangChain: ContextualCompressionRetriever.astream_events, rank1's custom events")
    retriever = ContextualCompressionRetriever(
        base_compressor=Rank1Rerank(reranker=reranker, top_n=top_n), base_retriever=BM25Retriever(index=index, k=k)
    )
    start = time.perf_counter()
    async for event in retriever.astream_events(question, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == "rank1_judgment":
            document = event["data"]["document"]
            print(line(time.perf_counter() - start, document.metadata["source"], document.metadata))
        elif event["event"] == "on_retriever_end" and event["name"] == "ContextualCompressionRetriever":
            kept = [d.metadata["source"] for d in event["data"]["output"]]
            print(f"  +{time.perf_counter() - start:5.2f}s  kept (top {top_n}, best first): {kept}")


async def llama_index(reranker: Rank1Reranker, question: str, index: BM25, k: int, top_n: int) -> None:
    from _llama_index_parts import BM25NodeRetriever
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    from rank1_integrations.adapters.llama_index import Rank1JudgmentEvent, Rank1Rerank

    print("\n== LlamaIndex: Rank1JudgmentEvent on the instrumentation dispatcher")
    start = time.perf_counter()

    class ShowSources(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, Rank1JudgmentEvent):
                metadata = event.node.node.metadata
                print(line(time.perf_counter() - start, metadata["file_name"], metadata))

    handler = ShowSources()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        nodes = BM25NodeRetriever(index, k=k).retrieve(question)
        kept = await Rank1Rerank(reranker, top_n=top_n).apostprocess_nodes(nodes, query_str=question)
    finally:
        root.event_handlers.remove(handler)
    names = [n.node.metadata["file_name"] for n in kept]
    print(f"  +{time.perf_counter() - start:5.2f}s  kept (top {top_n}, best first): {names}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--k", type=int, default=6, help="chunks retrieved (BM25) and judged")
    p.add_argument("--top-n", type=int, default=2, help="sources kept at the end")
    args = p.parse_args(argv)
    setup = resolve(args)
    index = BM25(stdlib_corpus())
    chunks = [chunk for chunk, _ in index.search(args.question, args.k)]
    print(f"\nQuestion: {args.question}  ({len(chunks)} chunks retrieved by BM25; times from the call's start)")
    # cache=False: each part judges afresh, so the times show the streaming, not the cache
    reranker = setup.reranker(cache=False)
    asyncio.run(core(reranker, args.question, chunks))
    asyncio.run(langchain(reranker, args.question, index, args.k, args.top_n))
    asyncio.run(llama_index(reranker, args.question, index, args.k, args.top_n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
