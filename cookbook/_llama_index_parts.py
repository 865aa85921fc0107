"""LlamaIndex glue for the examples: a BM25 retriever, an LLM on the answer backend, a stand-in agent LLM.

Needs only ``llama-index-core``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _shared import BM25, SEARCH_AGAIN, keywords
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rank1_integrations.adapters.context import ANSWER_WITH_SOURCES_PROMPT


class BM25NodeRetriever(BaseRetriever):
    """First-stage retrieval: BM25 over the stdlib docstring chunks; ``metadata["file_name"]`` names the object."""

    def __init__(self, index: BM25, k: int = 8) -> None:
        super().__init__()
        self._index, self._k = index, k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(
                node=TextNode(
                    id_=c.id, text=c.text, metadata={"file_name": c.source}, excluded_embed_metadata_keys=["file_name"]
                ),
                score=s,
            )
            for c, s in self._index.search(query_bundle.query_str, self._k)
        ]


class BackendLLM(CustomLLM):
    """A LlamaIndex LLM on a ``_llms.ChatBackend`` (an embedded vLLM engine or a server)."""

    backend: Any
    max_tokens: int = 96
    context_window: int = 2048

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens,
            model_name=self.backend.name,
            is_chat_model=True,
        )

    def _chat_text(self, messages: Sequence[ChatMessage]) -> str:
        conversation = [{"role": _role(m), "content": m.content or ""} for m in messages]
        return str(self.backend.chat(conversation, max_tokens=self.max_tokens))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role="assistant", content=self._chat_text(messages)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        text = self._chat_text(messages)
        yield ChatResponse(message=ChatMessage(role="assistant", content=text), delta=text)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._chat_text([ChatMessage(role="user", content=prompt)]))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt, formatted=formatted).text
        yield CompletionResponse(text=text, delta=text)


def _role(message: ChatMessage) -> str:
    role = str(message.role.value)
    return role if role in ("system", "user", "assistant") else "user"


class StandInReActLLM(BackendLLM):
    """A deterministic stand-in for a ReAct-capable LLM (offline, no capable model here).

    It writes ReAct steps by rule: search with the question; search again with keywords while
    the tool's observation says nothing is relevant (at most ``max_searches``); then an
    ``Answer:`` written by the real answer backend from the last observation.
    """

    tool_name: str = "search_python_docs"
    max_searches: int = 2

    def _chat_text(self, messages: Sequence[ChatMessage]) -> str:
        question = next(
            m.content or ""
            for m in reversed(messages)
            if m.role.value == "user" and "Observation" not in (m.content or "")
        )
        observations = [m.content or "" for m in messages if (m.content or "").startswith("Observation:")]
        if not observations or (SEARCH_AGAIN in observations[-1] and len(observations) < self.max_searches):
            query = keywords(question) if observations else question
            return (
                f"Thought: I need to search the Python documentation.\nAction: {self.tool_name}\n"
                f'Action Input: {{"query": "{query}"}}'
            )
        context = observations[-1].removeprefix("Observation:").strip()
        prompt = ANSWER_WITH_SOURCES_PROMPT.format(context=context, question=question)
        answer = " ".join(self.backend.chat([{"role": "user", "content": prompt}], max_tokens=self.max_tokens).split())
        return f"Thought: I can answer without using any more tools.\nAnswer: {answer or '(empty)'}"
