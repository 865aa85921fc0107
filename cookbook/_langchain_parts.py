"""LangChain glue for the examples: a BM25 retriever, a chat model on the answer backend, a stand-in agent LLM.

Needs only ``langchain-core``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _shared import BM25, SEARCH_AGAIN, keywords
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rank1_integrations.adapters.context import ANSWER_WITH_SOURCES_PROMPT

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "user"}


class BM25Retriever(BaseRetriever):
    """First-stage retrieval: BM25 over the stdlib docstring chunks; ``metadata["source"]`` names the object."""

    index: BM25
    k: int = 8
    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=c.text, id=c.id, metadata={"source": c.source, "bm25": round(s, 3)})
            for c, s in self.index.search(query, self.k)
        ]


class BackendChatModel(BaseChatModel):
    """A LangChain chat model on a ``_llms.ChatBackend`` (an embedded vLLM engine or a server)."""

    backend: Any
    max_tokens: int = 96

    @property
    def _llm_type(self) -> str:
        return "rank1-cookbook-chat"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        conversation = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        text = self.backend.chat(conversation, max_tokens=self.max_tokens, stop=stop)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class StandInPlanner(BaseChatModel):
    """A deterministic stand-in for a tool-calling LLM (offline, no capable model here).

    It calls the search tool with the question; while the tool answers that nothing is
    relevant it searches again with keywords (at most ``max_searches`` searches); then
    ``writer`` (a real LLM) writes the answer from the last sources. The agent loop
    around it is the same as with a real tool-calling model.
    """

    writer: BaseChatModel
    tool_name: str
    max_searches: int = 2

    @property
    def _llm_type(self) -> str:
        return "rank1-cookbook-stand-in-planner"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> StandInPlanner:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        question = next(str(m.content) for m in messages if isinstance(m, HumanMessage))
        results = [str(m.content) for m in messages if isinstance(m, ToolMessage)]
        if not results or (SEARCH_AGAIN in results[-1] and len(results) < self.max_searches):
            query = keywords(question) if results else question
            call = {"name": self.tool_name, "args": {"query": query}, "id": f"call_{len(results) + 1}"}
            message = AIMessage(content="", tool_calls=[call])
        else:
            answer = self.writer.invoke(ANSWER_WITH_SOURCES_PROMPT.format(context=results[-1], question=question))
            message = AIMessage(content=answer.content)
        return ChatResult(generations=[ChatGeneration(message=message)])
