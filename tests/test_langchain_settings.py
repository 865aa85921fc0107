"""The LangChain compressor's settings: checked on construction and on assignment, and no
secret (API key, credentials in a server URL) in its repr, dumps or LangSmith traces.

The secret tests build the compressor on a real vLLM server on loopback (the run's shared
server for the scripted test model) and trace it with LangChain's own LangSmith tracer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.langchain import LangChainTracer, wait_for_all_tracers
from langsmith import Client
from langsmith._internal._serde import dumps_json
from pydantic import SecretStr, ValidationError

from rank1_integrations.adapters.langchain import Rank1Rerank
from rank1_integrations.settings import Rank1Settings
from tests.adapter_support import BAD_SETTINGS, assert_assignments_refused, with_one_secret
from tests.conftest import ENGINE_KWARGS, SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.vllm_server import VLLMServer

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_api_key_in_the_environment")]

API_KEY = "sk-rank1-test-4f1c9a"
URL_PASSWORD = "url-pass-77e2b0"


def documents() -> list[Document]:
    return [
        Document(SORTED_PASSAGE, id="sorted", metadata={"source": "sorted.txt"}),
        Document(LEN_PASSAGE, id="len", metadata={"source": "len.txt"}),
        Document(OPEN_PASSAGE, id="open", metadata={"source": "open.txt"}),
    ]


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS)
def test_bad_settings_fail_on_construction(reranker, settings, message):
    with pytest.raises(ValidationError, match=message):
        Rank1Rerank(reranker=reranker, **settings)


def test_settings_default_to_the_environment_and_build_nothing_until_used(monkeypatch):
    with pytest.raises(ValidationError, match="pass reranker=, or settings= naming a model"):
        Rank1Rerank()
    monkeypatch.setenv("RANK1_MODEL", "some/model")
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", "64")
    compressor = Rank1Rerank(top_n=1)
    assert compressor.settings == Rank1Settings(model="some/model", max_reasoning_tokens=64)
    assert compressor.reranker is None  # no engine is loaded before the first call


def test_a_key_in_the_environment_does_not_stop_a_given_reranker(reranker, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    compressor = Rank1Rerank(reranker=reranker)
    assert compressor.reranker is reranker
    assert compressor.settings is None


@pytest.fixture(scope="session")
def built_from_settings(random_model_dir) -> Rank1Rerank:
    """Kept for the whole session: destroying an embedded vLLM engine tears down process-wide
    state (the model-parallel groups) that the other engines in this process still use."""
    settings = Rank1Settings(model=str(random_model_dir), max_reasoning_tokens=8, engine_args=ENGINE_KWARGS)
    return Rank1Rerank(settings=settings, score_threshold=0.0)


@pytest.mark.embedded
async def test_builds_its_reranker_from_settings_on_the_first_call(built_from_settings, random_model_dir):
    assert built_from_settings.reranker is None
    kept = await built_from_settings.acompress_documents(documents(), LEN_QUERY)
    reranker = built_from_settings.reranker
    assert reranker is not None
    assert reranker.max_reasoning_tokens == 8
    assert reranker.backend.model_name == str(random_model_dir)
    assert sorted(str(d.id) for d in kept) == ["len", "open", "sorted"]
    assert all(0.0 <= d.metadata["relevance_score"] <= 1.0 for d in kept)
    assert all(d.metadata["rank1_reasoning_tokens"] <= 8 for d in kept)
    built_from_settings.top_n = 3  # assignments go on after the build (reranker and settings both set)
    built_from_settings.compress_documents(documents(), LEN_QUERY)
    assert built_from_settings.reranker is reranker  # built once


# -- assignment ----------------------------------------------------------------------------


def test_assignments_are_checked_and_a_refused_one_changes_nothing(reranker):
    compressor = Rank1Rerank(reranker=reranker, top_n=3, min_keep=1)
    compressor.top_n = 1
    compressor.score_threshold = 0.15
    assert compressor.policy.top_n == 1
    assert_assignments_refused(compressor, compressor.model_dump)
    assert (compressor.top_n, compressor.min_keep, compressor.score_threshold) == (1, 1, 0.15)
    assert [d.id for d in compressor.compress_documents(documents(), LEN_QUERY)] == ["len"]


# -- secrets -------------------------------------------------------------------------------


@pytest.fixture(params=["api_key", "url_credentials"])
def secret_compressor(request: pytest.FixtureRequest, scripted_server: VLLMServer) -> Iterator[Rank1Rerank]:
    settings = with_one_secret(request.param, scripted_server, api_key=API_KEY, url_password=URL_PASSWORD)
    compressor = Rank1Rerank(settings=settings)
    yield compressor
    if compressor.reranker is not None:
        compressor.reranker.close()


class RecordingLangSmith(Client):
    """LangSmith's client with the network cut off: it keeps the JSON it would send."""

    def __init__(self) -> None:
        super().__init__(api_url="http://127.0.0.1:9", api_key="ls-test-key", auto_batch_tracing=False)
        self.payloads: list[str] = []

    def create_run(self, name, inputs, run_type, **kwargs):
        self.payloads.append(dumps_json({"name": name, "inputs": inputs, "run_type": run_type, **kwargs}).decode())

    def update_run(self, run_id, **kwargs):
        self.payloads.append(dumps_json({"run_id": run_id, **kwargs}).decode())


def test_no_secret_in_repr_or_dumps(secret_compressor, scripted_server):
    safe_url = f"http://127.0.0.1:{scripted_server.port}/v1"
    shown = {
        "repr": repr(secret_compressor),
        "str": str(secret_compressor),
        "model_dump": repr(secret_compressor.model_dump()),
        "model_dump_json": secret_compressor.model_dump_json(),
    }
    for how, text in shown.items():
        assert API_KEY not in text, how
        assert URL_PASSWORD not in text, how
        assert safe_url in text, how  # the settings are shown, without their secrets
    assert secret_compressor.model_dump()["settings"]["servers"] == (safe_url,)
    assert "api_key" not in secret_compressor.model_dump()["settings"]
    # and the key and URL still work: the server answered
    kept = secret_compressor.compress_documents(documents(), LEN_QUERY)
    assert [d.id for d in kept] == ["len"]
    assert API_KEY not in repr(secret_compressor)  # nor in the reranker it built


async def test_no_secret_in_langsmith_traces(secret_compressor, scripted_server):
    client = RecordingLangSmith()
    tracer = LangChainTracer(client=client, project_name="rank1-tests")
    config = {"callbacks": [tracer]}
    secret_compressor.compress_documents(documents(), LEN_QUERY, callbacks=[tracer])
    await secret_compressor.acompress_documents(documents(), LEN_QUERY, callbacks=[tracer])
    # the compressor itself as the input of a traced step (e.g. handed to a tool or a chain)
    RunnableLambda(lambda compressor: type(compressor).__name__).invoke(secret_compressor, config)
    wait_for_all_tracers()
    traced = "\n".join(client.payloads)
    assert traced.count('"name":"Rank1Rerank"') >= 2  # the compressor's own runs were traced ...
    assert LEN_QUERY in traced
    assert f"127.0.0.1:{scripted_server.port}" in traced  # ... and its settings, as an input
    assert API_KEY not in traced
    assert URL_PASSWORD not in traced


def test_servers_and_key_from_the_environment(scripted_server, monkeypatch):
    monkeypatch.setenv("RANK1_SERVERS", scripted_server.base_url)
    monkeypatch.setenv("RANK1_MODEL", scripted_server.model)
    monkeypatch.setenv("RANK1_MAX_REASONING_TOKENS", str(SCRIPTED_BUDGET))
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    compressor = Rank1Rerank()
    assert compressor.settings is not None
    assert compressor.settings.resolved_api_key() == SecretStr(API_KEY)
    try:
        assert [d.id for d in compressor.compress_documents(documents(), LEN_QUERY)] == ["len"]
        assert type(compressor.reranker.backend).__name__ == "RemoteBackend"  # type: ignore[union-attr]
    finally:
        compressor.reranker.close()  # type: ignore[union-attr]
    assert API_KEY not in repr(compressor) + compressor.model_dump_json()
