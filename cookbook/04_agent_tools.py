"""Agentic retrieval: search tools for a LangChain agent and a LlamaIndex agent that return rank1's reasons.

Each tool retrieves chunks (BM25), lets rank1 judge them and returns numbered sources, each
with rank1's verdict, score and rationale (its conclusion, one or two sentences quoted from
its reasoning: a compact note per source, not thousands of tokens). When rank1 finds nothing
relevant the tool says so (``SEARCH_AGAIN``) and shows the closest rejected chunks with
rank1's reasons for rejecting them, so the agent can search again with better words.

- LangChain: ``search_python_docs`` is a ``StructuredTool``; a minimal tool-calling loop
  (``bind_tools``, ``ToolMessage``) runs it.
- LlamaIndex: the same search as a ``FunctionTool``, run by ``ReActAgent``.

With a capable LLM (``--llm-base-url``, an OpenAI-compatible server; for LangChain it must
do tool calls, e.g. ``vllm serve Qwen/Qwen2.5-7B-Instruct --enable-auto-tool-choice
--tool-call-parser hermes``) the agents decide themselves. Offline there is no such LLM:
the tools are called directly, then both agent loops run with deterministic stand-ins for
the planning LLM (search; search again with keywords while nothing is relevant; answer),
while SmolLM2-135M-Instruct writes the final answer. The reranker is SmolLM2 too, not rank1.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import _llms
from _shared import BM25, SEARCH_AGAIN, optional, parser, resolve, stdlib_corpus

from rank1_integrations import Rank1Reranker

QUESTION = "How can I find the three largest numbers in a list without sorting all of it?"
TOOL_DOC = (
    "Search the Python standard library documentation. Returns numbered sources, each with a relevance "
    "judge's verdict, score and reason. If none is relevant it says so: then search again with other words."
)


def tool_output(query: str, retrieved: int, relevant: int, context: str) -> str:
    if relevant:
        return f"Sources for {query!r} (rank1 kept {relevant} of {retrieved} retrieved):\n\n{context}"
    closest = f"\n\nThe closest ones, with rank1's reasons:\n\n{context}" if context else ""
    return f"{SEARCH_AGAIN} ({retrieved} retrieved for {query!r}). Search again with other words.{closest}"


def langchain_tool(reranker: Rank1Reranker, index: BM25, k: int) -> Any:
    from _langchain_parts import BM25Retriever
    from langchain_core.tools import StructuredTool

    from rank1_integrations.adapters.langchain import Rank1Rerank, format_documents

    retriever = BM25Retriever(index=index, k=k)
    compressor = Rank1Rerank(reranker=reranker, top_n=3, min_keep=2)  # min_keep: the closest rejected ones

    def search_python_docs(query: str) -> str:
        docs = retriever.invoke(query)
        kept = compressor.compress_documents(docs, query)
        relevant = sum(d.metadata["rank1_kept_by"] == "relevance" for d in kept)
        return tool_output(query, len(docs), relevant, format_documents(kept))

    return StructuredTool.from_function(search_python_docs, description=TOOL_DOC)


def llama_index_tool(reranker: Rank1Reranker, index: BM25, k: int) -> Any:
    from _llama_index_parts import BM25NodeRetriever
    from llama_index.core.tools import FunctionTool

    from rank1_integrations.adapters.llama_index import Rank1Rerank, format_nodes

    retriever = BM25NodeRetriever(index, k=k)
    postprocessor = Rank1Rerank(reranker, top_n=3, min_keep=2)

    def search_python_docs(query: str) -> str:
        nodes = retriever.retrieve(query)
        kept = postprocessor.postprocess_nodes(nodes, query_str=query)
        relevant = sum(n.node.metadata["rank1_kept_by"] == "relevance" for n in kept)
        return tool_output(query, len(nodes), relevant, format_nodes(kept))

    return FunctionTool.from_defaults(search_python_docs, description=TOOL_DOC)


def run_langchain_agent(model: Any, tools: Sequence[Any], question: str, max_steps: int = 5) -> str:
    """The smallest tool-calling agent: call the model; run the tools it asks for; repeat until it answers."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

    by_name = {t.name: t for t in tools}
    bound = model.bind_tools(tools)
    messages: list[Any] = [SystemMessage("Use the search tool; cite sources as [n]."), HumanMessage(question)]
    for _ in range(max_steps):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return str(reply.content)
        for call in reply.tool_calls:
            output = by_name[call["name"]].invoke(call["args"])
            print(f"  tool call: {call['name']}({call['args']}) -> {output.splitlines()[0]}")
            messages.append(ToolMessage(output, tool_call_id=call["id"]))
    return "(no answer within the step limit)"


async def run_llama_index_agent(llm: Any, tool: Any, question: str) -> str:
    from llama_index.core.agent.workflow import ReActAgent, ToolCallResult

    agent = ReActAgent(tools=[tool], llm=llm, streaming=False)
    handler = agent.run(user_msg=question, max_iterations=8)
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            first = str(event.tool_output.content).splitlines()[0]
            print(f"  tool call: {event.tool_name}({event.tool_kwargs}) -> {first}")
    return str(await handler)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    _llms.add_options(p)
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--k", type=int, default=6, help="chunks retrieved per search (all judged by rank1)")
    args = p.parse_args(argv)
    setup = resolve(args)

    from _langchain_parts import BackendChatModel, StandInPlanner
    from _llama_index_parts import BackendLLM, StandInReActLLM

    reranker = _llms.reranker_for(args, setup)
    backend = _llms.answer_backend(args, setup, reranker)
    index = BM25(stdlib_corpus())
    lc_tool, li_tool = langchain_tool(reranker, index, args.k), llama_index_tool(reranker, index, args.k)

    print(f"\nQuestion: {args.question}\n\n== The LangChain tool, called directly\n{lc_tool.invoke(args.question)}")

    writer = BackendChatModel(backend=backend, max_tokens=args.max_answer_tokens)
    if isinstance(backend, _llms.ServerChat):  # a real LLM plans: it must do tool calls for LangChain
        chat_openai = optional("langchain_openai", "langchain-openai").ChatOpenAI
        key = os.environ.get(_llms.KEY_ENV) or "EMPTY"
        planner = chat_openai(base_url=args.llm_base_url, model=backend.model, api_key=key, temperature=0)
        li_llm: Any = BackendLLM(backend=backend, max_tokens=args.max_answer_tokens)
        print("\nAgents: planned by the LLM at --llm-base-url")
    else:
        planner = StandInPlanner(writer=writer, tool_name=lc_tool.name)
        li_llm = StandInReActLLM(backend=backend, max_tokens=args.max_answer_tokens, tool_name=li_tool.metadata.name)
        print("\nAgents: planned by a deterministic stand-in (no tool-calling LLM: see --llm-base-url)")

    print("\n== LangChain agent")
    print("Answer:", run_langchain_agent(planner, [lc_tool], args.question))
    print("\n== LlamaIndex ReActAgent")
    print("Answer:", asyncio.run(run_llama_index_agent(li_llm, li_tool, args.question)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
