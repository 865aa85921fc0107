"""The LlamaIndex postprocessor's settings: checked on construction and on assignment,
``to_dict`` / ``from_dict`` round-trips, and no secret in its repr or serial forms.

The round trip from server settings runs on a real vLLM server on loopback (the run's
shared server for the scripted test model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from llama_index.core.bridge.pydantic import SecretStr, ValidationError
from llama_index.core.schema import NodeWithScore, TextNode

from rank1_integrations import InvalidInputError
from rank1_integrations.adapters.llama_index import Rank1Rerank
from rank1_integrations.settings import Rank1Settings
from tests.adapter_support import BAD_SETTINGS, assert_assignments_refused, with_one_secret
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.vllm_server import VLLMServer

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("no_api_key_in_the_environment")]

API_KEY = "sk-rank1-test-0b7d21"
URL_PASSWORD = "url-pass-5c90aa"


def nodes() -> list[NodeWithScore]:
    texts = {"sorted": SORTED_PASSAGE, "len": LEN_PASSAGE, "open": OPEN_PASSAGE}
    return [NodeWithScore(node=TextNode(id_=key, text=text), score=0.5) for key, text in texts.items()]


def kept_ids(post: Rank1Rerank) -> list[str]:
    return [n.node.node_id for n in post.postprocess_nodes(nodes(), query_str=LEN_QUERY)]


@pytest.mark.parametrize(
    ("settings", "message"),
    [*BAD_SETTINGS, ({"reasoning_in_llm_text": True}, "'rationale', 'full' or 'none'")],
)
def test_bad_settings_fail_on_construction(reranker, settings, message):
    with pytest.raises(ValidationError, match=message):
        Rank1Rerank(reranker, **settings)


def test_a_reranker_or_the_settings_for_one(reranker, monkeypatch):
    with pytest.raises(ValidationError, match="pass reranker=, or settings= naming a model"):
        Rank1Rerank()
    with pytest.raises(ValidationError, match="not both"):
        Rank1Rerank(reranker, settings=Rank1Settings(model="x"))
    monkeypatch.setenv("RANK1_API_KEY", "from-env")  # a key in the environment is no setting of this one
    assert Rank1Rerank(reranker).reranker is reranker
    monkeypatch.setenv("RANK1_MODEL", "some/model")
    post = Rank1Rerank(top_n=1)
    assert post.settings == Rank1Settings(model="some/model")
    assert post.reranker is None  # built on the first call


def test_assignments_are_checked_and_a_refused_one_changes_nothing(reranker):
    post = Rank1Rerank(reranker, top_n=3, min_keep=1)
    post.top_n = 1
    post.score_threshold = 0.15
    assert_assignments_refused(post, post.to_dict)
    assert (post.top_n, post.min_keep, post.score_threshold) == (1, 1, 0.15)
    assert kept_ids(post) == ["len"]


def test_a_live_reranker_is_named_when_it_must_be_passed_again(reranker):
    post = Rank1Rerank(
        reranker, top_n=2, min_keep=1, template="SciFact", reasoning_in_llm_text="full", reasoning_effort="none"
    )
    data = post.to_dict()
    assert data["class_name"] == "Rank1Rerank"
    assert data["reranker_source"] == "given"
    assert (data["top_n"], data["min_keep"], data["template"], data["reasoning_in_llm_text"]) == (
        2,
        1,
        "SciFact",
        "full",
    )
    assert (data["settings"], data["reasoning_effort"], data["max_reasoning_tokens"]) == (None, "none", None)
    with pytest.raises(InvalidInputError, match=r"live Rank1Reranker.*from_dict\(data, reranker=reranker\)"):
        Rank1Rerank.from_dict(data)
    again = Rank1Rerank.from_dict(data, reranker=reranker)
    assert again.reranker is reranker
    assert again.to_dict() == data
    assert Rank1Rerank.from_json(post.to_json(), reranker=reranker).to_dict() == data


# -- built from server settings: the round trip, and secrets ---------------------------------


@pytest.fixture(params=["api_key", "url_credentials"])
def from_settings(request: pytest.FixtureRequest, scripted_server: VLLMServer) -> Iterator[Rank1Rerank]:
    settings = with_one_secret(request.param, scripted_server, api_key=API_KEY, url_password=URL_PASSWORD)
    post = Rank1Rerank(settings=settings, min_keep=2)
    yield post
    if post.reranker is not None:
        post.reranker.close()


def test_settings_round_trip_and_secrets_are_never_serialized(from_settings, scripted_server):
    server = scripted_server
    safe_url = f"http://127.0.0.1:{server.port}/v1"
    assert from_settings.settings is not None
    key = from_settings.settings.api_key
    assert key in (SecretStr(API_KEY), None)
    data = from_settings.to_dict()
    assert data["reranker_source"] == "settings"
    settings = data["settings"]
    assert (settings["servers"], settings["model"], data["min_keep"]) == ((safe_url,), server.model, 2)
    assert (settings["max_reasoning_tokens"], settings["cache_entries"]) == (SCRIPTED_BUDGET, 0)
    assert "api_key" not in settings
    kept = kept_ids(from_settings)
    assert kept == ["len", "open"]
    from_settings.min_keep = 2  # assignments go on after the build (reranker and settings both set)
    for how, text in {"repr": repr(from_settings), "to_dict": repr(data), "to_json": from_settings.to_json()}.items():
        assert API_KEY not in text, how
        assert URL_PASSWORD not in text, how
        assert safe_url in text, how
    assert json.loads(from_settings.to_json()) == json.loads(json.dumps(data))
    # rebuilt from the data alone (a key from the environment, as on a fresh machine)
    for rebuild in (lambda: Rank1Rerank.from_dict(data), lambda: Rank1Rerank.from_json(from_settings.to_json())):
        with pytest.MonkeyPatch.context() as patch:
            if key is not None:
                patch.setenv("RANK1_API_KEY", API_KEY)
            again = rebuild()
        try:
            assert again.to_dict() == data
            assert again.settings is not None
            assert again.settings.api_key == key
            assert kept_ids(again) == kept
            assert type(again.reranker.backend).__name__ == "RemoteBackend"
            assert again.reranker is not from_settings.reranker
        finally:
            if again.reranker is not None:
                again.reranker.close()
