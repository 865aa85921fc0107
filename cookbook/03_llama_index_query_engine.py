"""LlamaIndex query engine with the rank1 postprocessor: an answer citing [n], each source with rank1's reason.

``CitationQueryEngine`` (llama-index-core) numbers the sources it gives the LLM and asks it
to cite them as [n]; ``Rank1Rerank`` sits in its ``node_postprocessors``, so the sources
are the chunks rank1 kept, best first, each carrying rank1's reasoning in its metadata and
its rationale (its conclusion, one or two sentences) in the text the LLM reads
(``metadata_mode=LLM``). The printed explanations are those rationales, from rank1's
judgments, not from the answer LLM. Any other query engine takes the postprocessor the
same way: ``index.as_query_engine(node_postprocessors=[Rank1Rerank(reranker, top_n=3)])``.

Offline the reranker is SmolLM2-135M-Instruct (not rank1) and so is the answer LLM, on the
same vLLM engine. With a GPU: ``--model jhu-clsp/rank1-7b --llm-base-url http://host:8000/v1``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _llms
from _shared import BM25, parser, print_cited_answer, resolve, stdlib_corpus
from llama_index.core.query_engine import CitationQueryEngine
from llama_index.core.schema import MetadataMode

from rank1_integrations.adapters.context import ContextSource
from rank1_integrations.adapters.llama_index import Rank1Rerank

QUESTION = "How can I remove a whole directory tree, including the files in it?"


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    _llms.add_rag_options(p, QUESTION)
    args = p.parse_args(argv)
    setup = resolve(args)

    from _llama_index_parts import BackendLLM, BM25NodeRetriever

    reranker = _llms.reranker_for(args, setup)
    backend = _llms.answer_backend(args, setup, reranker)
    llm = BackendLLM(backend=backend, max_tokens=args.max_answer_tokens, context_window=setup.context or 4096)
    engine = CitationQueryEngine(
        retriever=BM25NodeRetriever(BM25(stdlib_corpus()), k=args.k),
        llm=llm,
        node_postprocessors=[Rank1Rerank(reranker, top_n=args.top_n, min_keep=args.min_keep)],
        citation_chunk_size=1024,  # one citation per kept chunk
        metadata_mode=MetadataMode.LLM,  # the LLM reads rank1's rationale with each source
    )

    response = engine.query(args.question)

    print(f"\nQuestion: {args.question}")
    sources = [
        ContextSource.from_metadata(n.node.get_content(), n.node.metadata["file_name"], n.node.metadata)
        for n in response.source_nodes
    ]
    print_cited_answer(str(response), sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
