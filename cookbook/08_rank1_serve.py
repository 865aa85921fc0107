"""rank1 serve: rank1 behind LangChain's and LlamaIndex's Cohere rerankers, by changing only the base URL.

Prints the set-ups (no options): one ``rank1 serve`` per GPU (each with its own embedded
engine), or one ``rank1 serve --server ...`` gateway in front of several vLLM servers.
With ``--url`` it reranks through a running rank1 serve; with ``--launch`` it starts one
here on ``--model`` (on CPU, or offline, the SmolLM2 stand-in, which is not rank1) and
stops it at the end::

    python cookbook/08_rank1_serve.py                               # the set-ups' commands
    python cookbook/08_rank1_serve.py --launch                      # start one here, rerank, stop
    RANK1_SERVE_API_KEY=... python cookbook/08_rank1_serve.py --url http://gpu-a:8080 --served-name rank1-7b

The pipelines are the frameworks' own Cohere ones: LangChain's ``ContextualCompressionRetriever``
with ``langchain_cohere.CohereRerank`` and LlamaIndex's ``CohereRerank`` postprocessor. Pointed
at rank1 serve (``base_url``, ``model``: the served name) they rank with rank1; the Cohere SDK
call at the end shows the fields those wrappers drop: rank1's verdict and reasoning.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from _shared import BM25, note, optional, parser, resolve, stdlib_corpus

import rank1_integrations
from rank1_integrations.core.rationale import rationale

QUERY = "How do I run a shell command from Python and capture what it prints?"
SETUPS = """# One rank1 serve per GPU: each owns its GPU's engine; put your load balancer in front.
CUDA_VISIBLE_DEVICES=0 rank1 serve --model jhu-clsp/rank1-7b --model-name rank1-7b --host 0.0.0.0 --port 8080 \\
    --serve-api-key-env RANK1_SERVE_API_KEY --engine-arg max_model_len=16384 --engine-arg gpu_memory_utilization=0.9
CUDA_VISIBLE_DEVICES=1 rank1 serve --model jhu-clsp/rank1-7b --model-name rank1-7b --host 0.0.0.0 --port 8081 \\
    --serve-api-key-env RANK1_SERVE_API_KEY --engine-arg max_model_len=16384 --engine-arg gpu_memory_utilization=0.9

# Or a gateway (no GPU, no vLLM, no torch) in front of vLLM servers, one per GPU:
CUDA_VISIBLE_DEVICES=0 python -m vllm.entrypoints.openai.api_server --model jhu-clsp/rank1-7b \\
    --served-model-name rank1-7b --port 8000 --enable-tokenizer-info-endpoint --max-model-len 16384
CUDA_VISIBLE_DEVICES=1 python -m vllm.entrypoints.openai.api_server --model jhu-clsp/rank1-7b \\
    --served-model-name rank1-7b --port 8001 --enable-tokenizer-info-endpoint --max-model-len 16384
rank1 serve --server http://gpu-box:8000/v1 --server http://gpu-box:8001/v1 --model rank1-7b \\
    --host 0.0.0.0 --port 8080 --serve-api-key-env RANK1_SERVE_API_KEY

# Clients: only the base URL (and the model name) change.
#   LangChain:  CohereRerank(base_url="http://rank1-host:8080", model="rank1-7b", cohere_api_key=KEY, top_n=3)
#   LlamaIndex: CohereRerank(base_url="http://rank1-host:8080", model="rank1-7b", api_key=KEY, top_n=3)
#   Cohere SDK: cohere.ClientV2(api_key=KEY, base_url="http://rank1-host:8080").rerank(model="rank1-7b", ...)"""
HEALTH_TIMEOUT = 600.0


def launch(args, log: Path) -> tuple[subprocess.Popen, str, str, str]:
    """rank1 serve on a free loopback port, the resolved model (offline stand-in where rank1 is missing)."""
    setup = resolve(args)
    key = secrets.token_urlsafe(16)  # the demo's own key, handed over in the environment, never on a command line
    name, port = "rank1-demo", free_port()
    command = [sys.executable, "-m", "rank1_integrations", "serve", "--model", setup.model.path, "--port", str(port)]
    command += ["--model-name", name, "--max-reasoning-tokens", str(setup.budget)]
    if setup.context:
        command += ["--context-size", str(setup.context)]  # also the engine's max_model_len
    # on CPU, rank1 serve gives the engine its CPU defaults (float32, eager) itself
    # the same rank1_integrations as this process (a checkout, or the installed package)
    package_root = str(Path(rank1_integrations.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "RANK1_SERVE_API_KEY": key, "PYTHONPATH": path}
    process = subprocess.Popen(
        command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while time.monotonic() - started < HEALTH_TIMEOUT:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    print(f"rank1 serve healthy after {time.monotonic() - started:.0f} s: {url} (model {name!r})")
                    return process, url, name, key
        except OSError:
            time.sleep(0.5)
    stop(process)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise SystemExit(f"rank1 serve did not become healthy; last lines of {log}:\n{tail}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # running requests finish first
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def rerank_everywhere(url: str, name: str, key: str, k: int, top_n: int) -> None:
    optional("langchain_cohere", "langchain-cohere")
    optional("llama_index.postprocessor.cohere_rerank", "llama-index-postprocessor-cohere-rerank")
    optional("langchain_classic", "langchain-classic")
    import cohere
    from _langchain_parts import BM25Retriever
    from _llama_index_parts import BM25NodeRetriever
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_cohere import CohereRerank as LangChainCohereRerank
    from llama_index.postprocessor.cohere_rerank import CohereRerank as LlamaIndexCohereRerank

    index = BM25(stdlib_corpus())
    print(f"\nQuery: {QUERY}")

    print("\n== LangChain: ContextualCompressionRetriever + langchain_cohere.CohereRerank")
    retriever = ContextualCompressionRetriever(
        base_compressor=LangChainCohereRerank(base_url=url, model=name, cohere_api_key=key, top_n=top_n),
        base_retriever=BM25Retriever(index=index, k=k),
    )
    for number, doc in enumerate(retriever.invoke(QUERY), start=1):
        print(f"  [{number}] {doc.metadata['source']}  relevance_score {doc.metadata['relevance_score']:.3f}")

    print("\n== LlamaIndex: the CohereRerank node postprocessor")
    postprocessor = LlamaIndexCohereRerank(base_url=url, model=name, api_key=key, top_n=top_n)
    nodes = postprocessor.postprocess_nodes(BM25NodeRetriever(index, k).retrieve(QUERY), query_str=QUERY)
    for number, node in enumerate(nodes, start=1):
        print(f"  [{number}] {node.node.metadata['file_name']}  score {node.score:.3f}")

    print("\n== The Cohere SDK: rank1's verdict and reasoning come with every result")
    hits = [chunk for chunk, _ in index.search(QUERY, k)]
    client = cohere.ClientV2(api_key=key, base_url=url)
    for result in client.rerank(model=name, query=QUERY, documents=[c.text for c in hits], top_n=top_n).results:
        fields = result.model_dump()  # index and relevance_score, then rank1's own fields
        verdict = "relevant" if fields["relevant"] else "not relevant"
        forced = ", forced" if fields["forced"] else ""
        print(f"  [{hits[result.index].source}] {verdict}, score {result.relevance_score:.3f}{forced}")
        print(f"      why (rank1): {rationale(fields['reasoning'])}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--launch", action="store_true", help="start rank1 serve here on --model, rerank, stop it")
    p.add_argument("--url", help="a running rank1 serve (its key from RANK1_SERVE_API_KEY)")
    p.add_argument("--served-name", default="rank1-7b", help="with --url: the model name it serves")
    p.add_argument("--k", type=int, default=6, help="BM25 hits to rerank")
    p.add_argument("--top-n", type=int, default=3)
    args = p.parse_args(argv)
    if args.url:
        rerank_everywhere(args.url, args.served_name, os.environ.get("RANK1_SERVE_API_KEY", "none"), args.k, args.top_n)
        return 0
    if not args.launch:
        print(SETUPS)
        return 0
    with tempfile.TemporaryDirectory(prefix="rank1-serve-") as logs:
        process, url, name, key = launch(args, Path(logs) / "rank1-serve.log")
        try:
            rerank_everywhere(url, name, key, args.k, args.top_n)
        finally:
            note("Stopping rank1 serve (SIGTERM) ...")
            stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
