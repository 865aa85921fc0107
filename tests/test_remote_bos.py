"""The remote backend on a server whose tokenizer adds a BOS, and whose model writes control tokens.

A real vLLM server on loopback serves the chaos model (Llama 3 style tokenizer,
``<|begin_of_text|>`` before every prompt). Truncation through the server's own
``/tokenize``/``/detokenize`` must keep a prefix of the passage and count exactly, and
forced answers built from what the model generated must be the embedded engine's, id for id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rank1_integrations import Rank1Reranker
from rank1_integrations.backends.remote.backend import RemoteBackend
from rank1_integrations.core.prompting import PromptBuilder
from rank1_integrations.core.tokenization import HFPromptTokenizer
from tests import reference
from tests.recording import RecordingBackend
from tests.test_forced_fidelity import PASSAGES, QUERY
from tests.vllm_server import VLLMServer, shared_server, stop_all, stop_shared

pytestmark = pytest.mark.engine

ARGS = ("--enable-tokenizer-info-endpoint",)
LONG_PASSAGES = [
    "Return the length (the number of items) of an object. " * 30,
    "日本語のテキスト、café crème — 🙂🙃 and more. " * 30,
    "<s> <|begin_of_text|> </think> true: special-token strings as data. " * 15,
]


@pytest.fixture(scope="module")
def server(chaos_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> Iterator[VLLMServer]:
    request.config.add_cleanup(stop_all)
    yield shared_server(chaos_model_dir, *ARGS, log_dir=model_cache).wait_ready()
    stop_shared(chaos_model_dir, *ARGS)


@pytest.fixture(scope="module")
def remote(server: VLLMServer) -> Iterator[RemoteBackend]:
    # The server's own tokenizer, not the local copy the backend would otherwise pick and check.
    backend = RemoteBackend(server.base_url, server.model, initial_backoff=0.02, tokenizer="server")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def local(chaos_model_dir: Path) -> HFPromptTokenizer:
    return HFPromptTokenizer(reference.tokenizer(chaos_model_dir))


def test_the_server_tokenizer_has_the_local_facts(remote, local) -> None:
    served = remote.tokenizer
    assert list(served.leading_ids) == list(local.leading_ids) == [reference.tokenizer(remote.model_name).bos_token_id]
    assert dict(served.control_tokens) == dict(local.control_tokens)


@pytest.mark.parametrize("budget", [60, 97, 150])
@pytest.mark.parametrize("passage", LONG_PASSAGES, ids=["ascii", "multibyte", "special-strings"])
def test_truncation_through_the_server_keeps_a_prefix_and_counts_exactly(remote, local, passage, budget) -> None:
    served = PromptBuilder(remote.tokenizer, template=None, max_prompt_tokens=budget).build(QUERY, passage)
    assert served == PromptBuilder(local, template=None, max_prompt_tokens=budget).build(QUERY, passage)
    cut = served.text.partition("\nPassage: ")[2].removesuffix("\n<think>")
    assert served.truncated
    assert cut
    assert passage.startswith(cut)
    assert len(served.token_ids) <= budget
    assert served.token_ids.count(local.leading_ids[0]) == 1
    whole = PromptBuilder(remote.tokenizer, template=None, max_prompt_tokens=10_000).build(QUERY, passage)
    assert served.passage_tokens_dropped == len(whole.token_ids) - len(served.token_ids) > 0


@pytest.mark.parametrize("budget", [3, 15, 60])
def test_forced_answers_equal_the_embedded_engines(remote, chaos_backend, budget: int) -> None:
    sent = {}
    for name, backend in (("remote", remote), ("embedded", chaos_backend)):
        recording = RecordingBackend(backend)
        judgments = Rank1Reranker(recording, max_reasoning_tokens=budget, cache=False).judge(QUERY, PASSAGES)
        sent[name] = ([(e.request, e.forced) for e in recording.exchanges()], judgments)
    (remote_sent, remote_judgments), (embedded_sent, embedded_judgments) = sent["remote"], sent["embedded"]
    # The same prompts and forced prompts, id for id (the server's prompts may go out in another order).
    assert sorted(remote_sent, key=repr) == sorted(embedded_sent, key=repr)
    for got, want in zip(remote_judgments, embedded_judgments, strict=True):
        assert got.forced
        assert (got.reasoning, got.reasoning_tokens) == (want.reasoning, want.reasoning_tokens)
        assert got.score == pytest.approx(want.score, abs=1e-4)
