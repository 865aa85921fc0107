"""rank1-serve's APIs through the real clients that speak them, on the scripted test model.

The app runs in-process on a loopback port (uvicorn in a thread) over the session's
embedded engine. The Cohere SDK, langchain-cohere's ``CohereRerank``, LlamaIndex's Cohere
and Jina postprocessors are pointed at it by their base URL, and must rank and score
exactly as ``Rank1Reranker.judge`` on the same engine; raw HTTP checks rank1's extra
fields, the response shapes and every 4xx answer.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import cohere
import httpx
import pytest
from langchain_cohere import CohereRerank as LangChainCohereRerank
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank as LlamaIndexCohereRerank
from llama_index.postprocessor.jinaai_rerank import JinaRerank
from prometheus_client.parser import text_string_to_metric_families

from rank1_integrations import Judgment, Rank1Reranker
from rank1_integrations.serve import Limits, create_app
from tests.adapter_support import TOLERANCE
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import LEN_PASSAGE, LEN_QUERY, OPEN_PASSAGE, SORTED_PASSAGE
from tests.serve_support import API_KEY, InProcessServer

pytestmark = pytest.mark.engine

NAME = "rank1-test"
DOCS = [SORTED_PASSAGE, LEN_PASSAGE, OPEN_PASSAGE]
RANKED = [1, 2, 0]
"""What the script promises for DOCS: LEN (relevant), OPEN (forced, not relevant), SORTED."""
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(scripted_reranker) -> Iterator[InProcessServer]:
    """The app over the session's engine: its own reranker (and result cache), an API key, small limits."""
    reranker = Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET)
    app = create_app(reranker, served_model_names=[NAME], api_key=API_KEY, limits=Limits(8, 2000))
    served = InProcessServer(app)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def expected(truth) -> list[Judgment]:
    """``judge``'s judgments of DOCS (a reranker without cache on the same engine), best first."""
    by_text = {LEN_PASSAGE: truth["len"], SORTED_PASSAGE: truth["sorted"], OPEN_PASSAGE: truth["open"]}
    return [by_text[DOCS[i]] for i in RANKED]


def post(server: InProcessServer, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH if headers is None else headers, timeout=60)


def assert_rank1_fields(result: dict[str, Any], judgment: Judgment) -> None:
    assert result["relevance_score"] == pytest.approx(judgment.score, abs=TOLERANCE)
    assert result["reasoning"] == judgment.reasoning
    assert result["relevant"] is judgment.relevant
    assert result["forced"] is judgment.forced
    assert result["reasoning_tokens"] == judgment.reasoning_tokens


# -- real clients --------------------------------------------------------------------------


def test_cohere_sdk(server, expected) -> None:
    client = cohere.ClientV2(api_key=API_KEY, base_url=server.url)
    response = client.rerank(model=NAME, query=LEN_QUERY, documents=DOCS)
    assert [r.index for r in response.results] == RANKED
    for result, judgment in zip(response.results, expected, strict=True):
        assert_rank1_fields(result.model_dump(), judgment)  # rank1's fields arrive as the SDK's extras
    top = client.rerank(model=NAME, query=LEN_QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in top.results] == RANKED[:2]


async def test_cohere_async_sdk(server, expected) -> None:
    client = cohere.AsyncClientV2(api_key=API_KEY, base_url=server.url)
    response = await client.rerank(model=NAME, query=LEN_QUERY, documents=DOCS, top_n=1)
    assert [(r.index, r.relevance_score) for r in response.results] == [(RANKED[0], pytest.approx(expected[0].score))]


def test_langchain_cohere_rerank(server, expected) -> None:
    compressor = LangChainCohereRerank(base_url=server.url, model=NAME, cohere_api_key=API_KEY, top_n=2)
    docs = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(DOCS)]
    kept = compressor.compress_documents(docs, LEN_QUERY)
    assert [d.metadata["n"] for d in kept] == RANKED[:2]
    assert [d.metadata["relevance_score"] for d in kept] == pytest.approx([j.score for j in expected[:2]])


def test_llama_index_cohere_postprocessor(server, expected) -> None:
    postprocessor = LlamaIndexCohereRerank(api_key=API_KEY, base_url=server.url, model=NAME, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=text, id_=f"n{i}"), score=0.5) for i, text in enumerate(DOCS)]
    kept = postprocessor.postprocess_nodes(nodes, query_str=LEN_QUERY)
    assert [n.node.node_id for n in kept] == [f"n{i}" for i in RANKED[:2]]
    assert [n.score for n in kept] == pytest.approx([j.score for j in expected[:2]])


def test_llama_index_jina_postprocessor(server, expected) -> None:
    postprocessor = JinaRerank(base_url=f"{server.url}/v1", api_key=API_KEY, model=NAME, top_n=3)
    nodes = [NodeWithScore(node=TextNode(text=text, id_=f"n{i}"), score=0.5) for i, text in enumerate(DOCS)]
    kept = postprocessor.postprocess_nodes(nodes, query_str=LEN_QUERY)
    assert [n.node.node_id for n in kept] == [f"n{i}" for i in RANKED]
    assert [n.score for n in kept] == pytest.approx([j.score for j in expected])


# -- raw HTTP: shapes and rank1's fields ----------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_jina_shape_carries_rank1_fields(server, expected, path) -> None:
    response = post(server, path, {"model": NAME, "query": LEN_QUERY, "documents": DOCS})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == NAME
    assert body["id"].startswith("rerank-")
    assert [r["index"] for r in body["results"]] == RANKED
    for result, judgment in zip(body["results"], expected, strict=True):
        assert_rank1_fields(result, judgment)
        assert result["document"] == {"text": DOCS[result["index"]]}
    assert body["usage"] == {"total_tokens": sum(j.reasoning_tokens for j in expected)}
    # documents as objects (Jina's form); no echo; the model may be left out
    objects = [{"text": text} for text in DOCS]
    lean = post(server, path, {"query": LEN_QUERY, "documents": objects, "return_documents": False}).json()
    assert [set(r) for r in lean["results"]] == [
        {
            "index",
            "relevance_score",
            "relevant",
            "reasoning",
            "forced",
            "reasoning_tokens",
            "reasoning_effort",
            "reasoned",
        }
    ] * 3
    assert [r["relevance_score"] for r in lean["results"]] == [r["relevance_score"] for r in body["results"]]
    assert lean["model"] == NAME


def test_cohere_shape(server, expected) -> None:
    body = post(server, "/v2/rerank", {"model": NAME, "query": LEN_QUERY, "documents": DOCS, "top_n": 2}).json()
    assert set(body) == {"id", "results", "meta"}
    assert body["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"output_tokens": sum(j.reasoning_tokens for j in expected)},
    }
    assert [r["index"] for r in body["results"]] == RANKED[:2]
    for result, judgment in zip(body["results"], expected[:2], strict=True):
        assert "document" not in result
        assert_rank1_fields(result, judgment)


def test_empty_texts_duplicates_and_top_n(server, expected) -> None:
    docs = [LEN_PASSAGE, "  ", SORTED_PASSAGE, LEN_PASSAGE]
    body = post(server, "/v1/rerank", {"query": LEN_QUERY, "documents": docs, "top_n": 10}).json()
    # ties keep the input order; an empty text is never sent and ranks last, score 0, not relevant
    assert [r["index"] for r in body["results"]] == [0, 3, 2, 1]
    assert body["results"][0]["relevance_score"] == body["results"][1]["relevance_score"]
    assert body["results"][3] == {
        "index": 1,
        "relevance_score": 0.0,
        "relevant": False,
        "reasoning": "",
        "forced": False,
        "reasoning_tokens": 0,
        "reasoning_effort": "full",
        "reasoned": False,
        "document": {"text": "  "},
    }
    assert post(server, "/v2/rerank", {"model": NAME, "query": LEN_QUERY, "documents": []}).json()["results"] == []


def test_health_models_and_metrics(server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [(NAME, "model", 1024)]
    post(server, "/v1/rerank", {"query": LEN_QUERY, "documents": DOCS})
    metrics = scrape(server)
    assert metrics["rank1_serve_requests_total", (("endpoint", "/v1/rerank"), ("status", "200"))] >= 1
    assert metrics["rank1_serve_documents_total", ()] >= 3
    assert metrics["rank1_serve_passages_judged_total", ()] >= 3
    assert metrics["rank1_serve_reasoning_tokens_total", ()] > 0
    assert metrics["rank1_serve_request_duration_seconds_count", (("endpoint", "/v1/rerank"),)] >= 1


def scrape(server: InProcessServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- bad requests: the API's JSON error, never a 500, never a stack trace ---------------------

LONG = "x" * 2001


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"documents": DOCS}, 422, "query: Field required"),
        ({"query": "", "documents": DOCS}, 422, "query: query is empty"),
        ({"query": "  \n", "documents": DOCS}, 422, "query: query is empty"),
        ({"query": 7, "documents": DOCS}, 422, "query: Input should be a valid string"),
        ({"query": LEN_QUERY, "documents": "one text"}, 422, "documents: Input should be a valid list"),
        ({"query": LEN_QUERY}, 422, "documents: Field required"),
        ({"query": LEN_QUERY, "documents": ["ok", 3]}, 422, "documents.1: a document must be a string or an object"),
        ({"query": LEN_QUERY, "documents": [{"txt": "a"}]}, 422, "documents.0: a document must be a string"),
        ({"query": LEN_QUERY, "documents": [{"text": None}]}, 422, "documents.0: a document must be a string"),
        ({"query": LEN_QUERY, "documents": DOCS, "top_n": 0}, 422, "top_n: Input should be greater than or equal to 1"),
        ({"query": LEN_QUERY, "documents": DOCS, "top_n": "2"}, 422, "top_n: Input should be a valid integer"),
        ({"query": LEN_QUERY, "documents": ["a"] * 9}, 413, "9 documents: this server takes at most 8"),
        ({"query": LEN_QUERY, "documents": [LONG]}, 413, "characters in the query and documents"),
        ({"model": "other", "query": LEN_QUERY, "documents": DOCS}, 404, "the model 'other' is not served here"),
        ([LEN_QUERY, DOCS], 422, "Input should be a valid dictionary"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_bad_requests(server, body, status, message, path) -> None:
    response = post(server, path, body)
    assert_error(response, status, message, path)


def assert_error(response: httpx.Response, status: int, message: str, path: str) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    if path.startswith("/v2/"):  # Cohere's shape
        assert set(body) == {"id", "message"}
        assert message in body["message"]
    else:  # vLLM's (OpenAI's)
        assert body["error"]["code"] == status
        assert message in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_bad_bodies(server, path) -> None:
    url = f"{server.url}{path}"
    not_json = httpx.post(
        url, content=b'{"query": "q", "documents": [', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_error(not_json, 400, "not valid JSON", path)
    untyped = httpx.post(url, content=b'{"query": "q", "documents": ["a"]}', headers=AUTH)  # no Content-Type
    assert_error(untyped, 415, "Content-Type: application/json", path)
    form = httpx.post(url, data={"query": "q"}, headers=AUTH)
    assert_error(form, 415, "Content-Type: application/json", path)
    assert_error(httpx.get(url, headers=AUTH), 405, "Method Not Allowed", path)


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "when was the \\ud800 mill built", "documents": ["The mill."]}',
        b'{"query": "q", "documents": ["a", "b\\udfff"]}',
    ],
    ids=["query", "document"],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_text_with_a_lone_surrogate_is_a_400(server, body, path) -> None:
    # valid JSON (an escape for half a surrogate pair), but no text: rank1 cannot tokenize it
    response = httpx.post(f"{server.url}{path}", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert_error(response, 400, "not valid Unicode text (", path)


BODY_LIMIT = 6 * 2000 + 64 * 8 + 2**20
"""The body limit Limits(8, 2000) derives: every character a 6-byte JSON escape, 64 bytes a document, 1 MiB."""


def exchange(server: InProcessServer, path: str, headers: dict[str, str], chunks: Sequence[bytes]) -> httpx.Response:
    """A raw HTTP/1.1 POST that sends ``chunks`` after the head (and nothing more), then reads the answer."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in {**AUTH, **headers}.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for chunk in chunks:
            sock.sendall(chunk)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_sent(server, path) -> None:
    response = exchange(server, path, {"Content-Length": str(200_000_000)}, [])
    assert_error(response, 413, f"the request body is larger than this server's limit of {BODY_LIMIT} bytes", path)
    assert Limits(8, 2000).max_body_bytes == BODY_LIMIT


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server, path) -> None:
    # a field nobody reads is counted too: it is in the body
    pieces = [b'{"query": "q", "documents": ["a"], "unread": "'] + [b"x" * 65536] * (BODY_LIMIT // 65536 + 1)
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces]  # never the last chunk
    response = exchange(server, path, {"Transfer-Encoding": "chunked"}, chunks)
    assert_error(response, 413, f"limit of {BODY_LIMIT} bytes", path)
    # a body under the limit, chunked, is read as before
    whole = f'{{"query": "{LEN_QUERY}", "documents": ["  "], "unread": "{"x" * 100_000}"}}'.encode()
    pieces = [whole[i : i + 65536] for i in range(0, len(whole), 65536)] + [b""]
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces]
    assert exchange(server, path, {"Transfer-Encoding": "chunked"}, chunks).status_code == 200


def test_unknown_paths_answer_json(server) -> None:
    assert_error(httpx.get(f"{server.url}/v1/nothing", headers=AUTH), 404, "Not Found", "/v1/nothing")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}, {"Authorization": API_KEY}],
    ids=["none", "wrong", "basic", "no-scheme"],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_api_key(server, headers, path) -> None:
    response = post(server, path, {"query": LEN_QUERY, "documents": DOCS}, headers=headers)
    assert_error(response, 401, "a valid API key is required", path)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert API_KEY not in response.text
    # checked before the body is read: a bad body without a key is still a 401
    assert httpx.post(f"{server.url}{path}", content=b"{", headers=headers).status_code == 401


def test_api_key_through_the_clients(server) -> None:
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server.url).rerank(model=NAME, query=LEN_QUERY, documents=DOCS)
    with pytest.raises(cohere.errors.NotFoundError):
        cohere.ClientV2(api_key=API_KEY, base_url=server.url).rerank(model="x", query=LEN_QUERY, documents=DOCS)


def test_an_api_key_with_surrounding_whitespace_is_stripped(scripted_reranker) -> None:
    """A key read from a secret file ends in a newline; no client can send one (HTTP strips it)."""
    reranker = Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET)
    served = InProcessServer(create_app(reranker, api_key=f"  {API_KEY}\n"))
    try:
        assert httpx.get(f"{served.url}/v1/models", headers=AUTH).status_code == 200
        assert httpx.get(f"{served.url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        served.stop()


# -- reasoning effort per request (issue 22) -------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_a_request_chooses_no_think_and_gets_the_judges_no_think_scores(server, scripted_reranker, path) -> None:
    body = {"model": NAME, "query": LEN_QUERY, "documents": DOCS, "reasoning_effort": "none"}
    response = post(server, path, body)
    assert response.status_code == 200, response.text
    results = {r["index"]: r for r in response.json()["results"]}
    truth = scripted_reranker.judge(LEN_QUERY, DOCS, reasoning_effort="none", max_reasoning_tokens=SCRIPTED_BUDGET)
    for index, judgment in enumerate(truth):
        assert results[index]["relevance_score"] == pytest.approx(judgment.score, abs=TOLERANCE)
        assert results[index]["reasoning_effort"] == "none"
        assert results[index]["reasoned"] is False
        assert results[index]["reasoning_tokens"] == 0
    full = {r["index"]: r for r in post(server, path, {**body, "reasoning_effort": "full"}).json()["results"]}
    assert all(r["reasoned"] and r["reasoning_effort"] == "full" for r in full.values())  # never a no-think score


def test_the_cohere_sdk_asks_for_no_think_with_an_extra_body_field(server) -> None:
    client = cohere.ClientV2(api_key=API_KEY, base_url=server.url)
    extra = {"additional_body_parameters": {"reasoning_effort": "none"}}
    response = client.rerank(model=NAME, query=LEN_QUERY, documents=DOCS, request_options=extra)
    fields = [r.model_dump() for r in response.results]
    assert [(f["reasoning_effort"], f["reasoned"], f["reasoning_tokens"]) for f in fields] == [("none", False, 0)] * 3


def test_a_request_budget_above_the_servers_is_a_400_and_below_it_is_used(server) -> None:
    body = {"model": NAME, "query": LEN_QUERY, "documents": DOCS}
    refused = post(server, "/v1/rerank", {**body, "max_reasoning_tokens": SCRIPTED_BUDGET + 1})
    assert refused.status_code == 400, refused.text
    assert "max_reasoning_tokens" in refused.json()["error"]["message"]
    short = post(server, "/v1/rerank", {**body, "max_reasoning_tokens": 2})
    assert short.status_code == 200, short.text
    assert all(r["reasoning_tokens"] <= 2 for r in short.json()["results"])
    for bad in [0, "many", True]:
        assert post(server, "/v1/rerank", {**body, "max_reasoning_tokens": bad}).status_code == 422
    assert post(server, "/v1/rerank", {**body, "reasoning_effort": "low"}).status_code == 422


def test_an_adaptive_request_reasons_only_on_what_its_top_n_needs(server) -> None:
    body = {"model": NAME, "query": LEN_QUERY, "documents": DOCS, "reasoning_effort": "adaptive", "top_n": 1}
    response = post(server, "/v1/rerank", body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1
    assert results[0]["reasoning_effort"] == "adaptive"
    assert results[0]["reasoned"] is True  # the top candidate is always reasoned on (adaptive_top_k = top_n)
