"""LangChain RAG: retriever -> rank1 filter -> an answer citing [n], each source with rank1's reason.

The chain (langchain-core only)::

    {question, documents: BM25 retriever}
      -> sources: Rank1Rerank.compress_documents (rank1 judges every retrieved chunk; keeps top_n)
      -> answer: ANSWER_WITH_SOURCES_PROMPT(format_documents(sources)) | chat model

``format_documents`` numbers the kept sources and puts rank1's rationale under each (its
conclusion, one or two sentences quoted from its reasoning: ``Judgment.rationale``), so the
answer LLM sees why each source is there; the printed explanations are the same rationales,
from rank1's judgments, not from the answer LLM. ``ContextualCompressionRetriever(base_compressor=Rank1Rerank(...),
base_retriever=...)`` (langchain-classic) does the first two steps in one retriever.

Offline the reranker is SmolLM2-135M-Instruct (not rank1) and so is the answer LLM, on the
same vLLM engine. With a GPU: ``--model jhu-clsp/rank1-7b --llm-base-url http://host:8000/v1``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import _llms
from _shared import BM25, parser, print_cited_answer, resolve, stdlib_corpus
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from rank1_integrations.adapters.context import ANSWER_WITH_SOURCES_PROMPT, ContextSource
from rank1_integrations.adapters.langchain import Rank1Rerank, format_documents

QUESTION = "How do I turn a Python dict into a JSON string with sorted keys and indentation?"


def build_chain(retriever: BaseRetriever, compressor: Rank1Rerank, llm: Runnable[Any, Any]) -> Runnable[str, dict]:
    """question -> {"question", "documents", "sources", "answer"}."""

    def rerank(x: dict[str, Any]) -> list[Any]:
        return list(compressor.compress_documents(x["documents"], x["question"]))

    def prompt_inputs(x: dict[str, Any]) -> dict[str, str]:
        return {"context": format_documents(x["sources"]), "question": x["question"]}

    answer = RunnableLambda(prompt_inputs) | PromptTemplate.from_template(ANSWER_WITH_SOURCES_PROMPT) | llm
    return (
        RunnableParallel(question=RunnablePassthrough(), documents=retriever)
        | RunnablePassthrough.assign(sources=RunnableLambda(rerank))
        | RunnablePassthrough.assign(answer=answer | StrOutputParser())
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    _llms.add_rag_options(p, QUESTION)
    args = p.parse_args(argv)
    setup = resolve(args)

    from _langchain_parts import BackendChatModel, BM25Retriever

    reranker = _llms.reranker_for(args, setup)
    llm = BackendChatModel(backend=_llms.answer_backend(args, setup, reranker), max_tokens=args.max_answer_tokens)
    retriever = BM25Retriever(index=BM25(stdlib_corpus()), k=args.k)
    # min_keep (default 1): rank1 can be strict, and a chatbot rarely wants an empty context; a source
    # kept only for that says so in its assessment.
    compressor = Rank1Rerank(reranker=reranker, top_n=args.top_n, min_keep=args.min_keep)

    result = build_chain(retriever, compressor, llm).invoke(args.question)

    print(f"\nQuestion: {args.question}")
    print(f"Retrieved {len(result['documents'])} chunks; rank1 kept {len(result['sources'])}.")
    sources = [ContextSource.from_metadata(d.page_content, d.metadata["source"], d.metadata) for d in result["sources"]]
    print_cited_answer(result["answer"], sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
