"""The answer LLM of the RAG and agent examples: a real local model, or any OpenAI-compatible server.

rank1 judges sources; another model writes the answer. Offline that is SmolLM2-135M-Instruct
run by vLLM (on the reranker's own engine when the reranker is the offline stand-in too).
With ``--llm-base-url`` (or ``RANK1_COOKBOOK_LLM_BASE_URL``) it is any OpenAI-compatible
chat server, e.g. ``vllm serve Qwen/Qwen2.5-7B-Instruct``. Framework-free; the LangChain and
LlamaIndex wrappers are in ``_langchain_parts`` and ``_llama_index_parts``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Protocol

from _shared import Setup, note

from rank1_integrations import Rank1Reranker
from rank1_integrations.cli.models import SMOLLM2 as SMOLLM2_NAME
from rank1_integrations.cli.models import offline_model_dir

URL_ENV, MODEL_ENV, KEY_ENV = "RANK1_COOKBOOK_LLM_BASE_URL", "RANK1_COOKBOOK_LLM_MODEL", "RANK1_COOKBOOK_LLM_API_KEY"
SMALL_MODEL_NOTE = "a 135M model: expect poor answers; the point is the pipeline and rank1's citations"


class ChatBackend(Protocol):
    name: str

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, stop: list[str] | None = None) -> str: ...


class EngineChat:
    """Chat with an embedded ``vllm.LLM`` through its chat template (greedy)."""

    def __init__(self, llm: Any, name: str) -> None:
        self.llm, self.name = llm, name

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, stop: list[str] | None = None) -> str:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=stop or None)
        return str(self.llm.chat(messages, params, use_tqdm=False)[0].outputs[0].text).strip()


class ServerChat:
    """Chat with an OpenAI-compatible server (vLLM, llama.cpp, a hosted API) with the openai client."""

    def __init__(self, base_url: str, model: str | None, api_key: str | None) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY")
        self.model = model or self.client.models.list().data[0].id
        self.name = f"{self.model} at {base_url}"

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, stop: list[str] | None = None) -> str:
        response = self.client.chat.completions.create(
            model=self.model,
            messages=messages,
            temperature=0.0,
            max_tokens=max_tokens,
            stop=stop,  # type: ignore[arg-type]
        )
        return (response.choices[0].message.content or "").strip()


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llm-base-url",
        default=os.environ.get(URL_ENV),
        help=f"OpenAI-compatible server for the answer LLM (default ${URL_ENV}; none: {SMOLLM2_NAME} via vLLM)",
    )
    parser.add_argument("--llm-model", default=os.environ.get(MODEL_ENV), help="its model name (default: the only one)")
    parser.add_argument("--max-answer-tokens", type=int, default=None, help="answer length (CPU default 96)")


def add_rag_options(parser: argparse.ArgumentParser, question: str) -> None:
    """The options of the cited-answer examples: the answer LLM, the question, how many sources."""
    add_options(parser)
    parser.add_argument("--question", default=question)
    parser.add_argument("--k", type=int, default=8, help="chunks retrieved by BM25 (all judged by rank1)")
    parser.add_argument("--top-n", type=int, default=3, help="sources kept for the answer")
    parser.add_argument("--min-keep", type=int, default=1, help="sources kept even when rank1 rejects them")


def needs_own_engine(args: argparse.Namespace, setup: Setup) -> bool:
    """True when the answer LLM is a second embedded engine (real rank1 and no server given)."""
    return not args.llm_base_url and not setup.model.fallback


def reranker_for(args: argparse.Namespace, setup: Setup, **kwargs: Any) -> Rank1Reranker:
    """The reranker, leaving GPU memory for a second (answer) engine when one will be started."""
    if needs_own_engine(args, setup) and not setup.cpu:
        kwargs.setdefault("gpu_memory_utilization", 0.8)
    return setup.reranker(**kwargs)


def answer_backend(args: argparse.Namespace, setup: Setup, reranker: Rank1Reranker) -> ChatBackend:
    """The answer LLM; prints which one it is."""
    backend: ChatBackend
    if args.llm_base_url:
        backend = ServerChat(args.llm_base_url, args.llm_model, os.environ.get(KEY_ENV))
    elif setup.model.fallback:  # one SmolLM2 engine plays both roles
        llm = reranker.backend.llm  # type: ignore[attr-defined]
        backend = EngineChat(llm, f"{SMOLLM2_NAME} run by vLLM, on the reranker's engine ({SMALL_MODEL_NOTE})")
    else:
        import vllm

        note(f"Starting a second vLLM engine for the answer LLM ({SMOLLM2_NAME}) ...")
        engine = dict(setup.engine) if setup.cpu else {"gpu_memory_utilization": 0.1}
        llm = vllm.LLM(model=str(offline_model_dir()), max_model_len=4096, **engine)
        backend = EngineChat(llm, f"{SMOLLM2_NAME} run by vLLM ({SMALL_MODEL_NOTE}; set --llm-base-url)")
    if args.max_answer_tokens is None:
        args.max_answer_tokens = 96 if setup.cpu else 512
    print(f"Answer LLM: {backend.name}", flush=True)
    return backend
