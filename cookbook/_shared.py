"""What every cookbook example shares: options, the model, CPU engine settings, the corpus, a retriever.

Nothing here is specific to one framework. Import it first: it sets vLLM's environment
before vLLM is imported (the fast CPU start needs that).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import re
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank1_integrations import DEFAULT_MAX_REASONING_TOKENS, Judgment, Rank1Error, Rank1Reranker
from rank1_integrations.adapters.context import ContextSource
from rank1_integrations.cli import models

DEFAULT_MODEL = "jhu-clsp/rank1-7b"
MODEL_ENV = "RANK1_COOKBOOK_MODEL"
CPU_BUDGET = 32
"""Reasoning budget on CPU or the offline model (rank1's authors use 8192 on GPUs)."""
CPU_CONTEXT = 2048
CPU_ENGINE: dict[str, Any] = {"enforce_eager": True, "dtype": "float32"}
FALLBACK_NOTE = (
    "NOT rank1: a small general chat model that never closes </think>, so every answer is forced; "
    "its scores and reasoning show the pipeline working, not rank1's judgments"
)


def note(message: str) -> None:
    """Progress notes go to stderr; results to stdout."""
    print(message, file=sys.stderr, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    """The options every example has: --model, --max-reasoning-tokens, --context-size, --verbose."""
    default = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--model",
        default=default,
        help=f"rank1 model: Hugging Face id or local folder (default ${MODEL_ENV} or {DEFAULT_MODEL}); "
        "where it cannot be had, the offline SmolLM2-135M-Instruct stand-in (not rank1) is used",
    )
    p.add_argument("--no-fallback", action="store_true", help="fail instead of using the offline stand-in")
    p.add_argument(
        "--max-reasoning-tokens",
        type=int,
        metavar="N",
        help=f"reasoning budget (default {DEFAULT_MAX_REASONING_TOKENS} on GPU, {CPU_BUDGET} on CPU)",
    )
    p.add_argument("--context-size", type=int, metavar="N", help=f"context window (CPU default {CPU_CONTEXT})")
    p.add_argument("--verbose", action="store_true", help="show vLLM's logs")
    return p


def prepare_environment(verbose: bool = False) -> bool:
    """vLLM's environment (before vLLM is imported), as ``rank1 rerank`` sets it; returns whether vLLM runs on CPU."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # keep stdout for results
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    cpu = models.on_cpu()
    if cpu:
        for key, value in {**models.CPU_ENV, "TOKENIZERS_PARALLELISM": "false"}.items():
            os.environ.setdefault(key, value)
    return cpu


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder vLLM can load, and what it is."""

    path: str
    name: str
    fallback: bool = False


def resolve_model(model: str, *, fallback: bool) -> ResolvedModel:
    """A local folder as is; a Hugging Face id from the cache or hub; else the offline stand-in, as ``rank1 rerank``."""
    if Path(model).expanduser().is_dir():
        return ResolvedModel(str(Path(model).expanduser().resolve()), model)
    try:
        path, why, stand_in = models.default_model(model)
    except Rank1Error as error:
        sys.exit(f"error: {error}")
    if stand_in and not fallback:
        sys.exit(f"error: {why.split(': using')[0]}")
    if stand_in:
        note(why)
    return ResolvedModel(path, models.SMOLLM2 if stand_in else model, stand_in)


@dataclass
class Setup:
    """The resolved model and what the examples need to start engines on it."""

    model: ResolvedModel
    cpu: bool
    budget: int
    context: int | None
    engine: dict[str, Any]

    def describe(self) -> str:
        what = f"{self.model.name} ({FALLBACK_NOTE})" if self.model.fallback else self.model.name
        return f"Reranker model: {what}\nReasoning budget: {self.budget} tokens"

    def reranker(self, template: str | None = None, cache: Any = True, **engine_kwargs: Any) -> Rank1Reranker:
        """A reranker on an embedded vLLM engine; ``engine_kwargs`` go to ``vllm.LLM``.

        The same as ``Rank1Reranker.from_vllm(model, max_reasoning_tokens=..., context_size=...,
        **engine_kwargs)``, except that one process starts one engine per model and settings:
        the test suite runs every example in one process on one engine.
        """
        from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

        settings = {**self.engine, **engine_kwargs}
        if self.context is not None:
            settings.setdefault("max_model_len", self.context)
        key = (self.model.path, tuple(sorted(settings.items())))
        if key not in _ENGINES:
            note(f"Starting vLLM on {'CPU' if self.cpu else 'GPU'} for {self.model.name} ...")
            _ENGINES[key] = VLLMEngineBackend.load(self.model.path, **settings)
        return Rank1Reranker(
            _ENGINES[key], template=template, max_reasoning_tokens=self.budget, context_size=self.context, cache=cache
        )


_ENGINES: dict[tuple[Any, ...], Any] = {}

"""One engine per model and settings for the whole process (vLLM engines live as long as the process)."""


def resolve(args: argparse.Namespace) -> Setup:
    """Find the model (falling back offline exactly as ``rank1 rerank`` does) and size the run."""
    cpu = prepare_environment(args.verbose)
    model = resolve_model(args.model, fallback=not args.no_fallback)
    small = cpu or model.fallback
    budget = args.max_reasoning_tokens or (CPU_BUDGET if small else DEFAULT_MAX_REASONING_TOKENS)
    context = args.context_size or (max(CPU_CONTEXT, budget + 1024) if cpu else None)
    setup = Setup(model, cpu, budget, context, dict(CPU_ENGINE) if cpu else {})
    print(setup.describe(), flush=True)
    return setup


def optional(module: str, install: str) -> Any:
    """Import an optional library or exit with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"this example needs {module}: pip install {install}  (or: pip install -e '.[cookbook]')")


# -- the corpus: documentation strings of the Python standard library ------------------

STDLIB_OBJECTS = (
    "sorted", "list.sort", "reversed", "heapq.nlargest", "bisect.insort", "json.dumps", "json.loads",
    "os.path.join", "os.makedirs", "pathlib.Path.glob", "shutil.copyfile", "shutil.rmtree", "str.split",
    "str.join", "textwrap.wrap", "re.sub", "re.compile", "time.sleep", "time.perf_counter",
    "datetime.timedelta", "collections.Counter", "collections.defaultdict", "itertools.groupby",
    "itertools.chain", "functools.lru_cache", "subprocess.run", "subprocess.check_output",
    "shlex.split", "threading.Lock", "concurrent.futures.ThreadPoolExecutor", "asyncio.gather",
    "random.shuffle", "copy.deepcopy", "math.isclose", "statistics.median", "csv.reader",
    "urllib.parse.urlparse", "tempfile.mkdtemp", "zipfile.ZipFile", "hashlib.sha256",
)  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    """The documented object, e.g. ``json.dumps``."""
    text: str


def _lookup(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    import builtins

    obj = builtins
    for attr in parts:
        obj = getattr(obj, attr)
    return obj


def stdlib_corpus(names: Sequence[str] = STDLIB_OBJECTS, max_chars: int = 700) -> list[Chunk]:
    """Docstrings read at run time (``inspect.getdoc``), cut into paragraph-aligned chunks."""
    chunks = []
    for name in names:
        doc = inspect.getdoc(_lookup(name)) or ""
        pieces: list[str] = []
        for paragraph in re.split(r"\n\s*\n", doc):
            paragraph = " ".join(paragraph.split())
            if pieces and len(pieces[-1]) + len(paragraph) < max_chars:
                pieces[-1] += "\n" + paragraph
            elif paragraph:
                pieces.append(textwrap.shorten(paragraph, max_chars, placeholder=" ..."))
        chunks += [Chunk(f"{name}#{i}", name, f"{name}: {piece}") for i, piece in enumerate(pieces)]
    return chunks


def first_chunks(names: Sequence[str]) -> list[Chunk]:
    """The first chunk of each object's docstring, in the order given."""
    first: dict[str, Chunk] = {}
    for chunk in stdlib_corpus(names):
        first.setdefault(chunk.source, chunk)
    return [first[name] for name in names]


_STOP_WORDS = frozenset(
    ("a", "an", "and", "are", "can", "do", "does", "for", "from", "how", "i", "in", "is", "it", "me", "my", "of"),
) | frozenset(("on", "or", "the", "to", "what", "when", "which", "while", "with", "without", "you", "your", "python"))


def _terms(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 over chunks: the first-stage retriever of the examples (no embedding model needed)."""

    def __init__(self, chunks: Sequence[Chunk], k1: float = 1.2, b: float = 0.75) -> None:
        self.chunks = list(chunks)
        self.k1, self.b = k1, b
        self.docs = [Counter(t for t in _terms(c.text) if t not in _STOP_WORDS) for c in self.chunks]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.lengths), 1)
        df = Counter(t for d in self.docs for t in d)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def search(self, query: str, k: int = 8) -> list[tuple[Chunk, float]]:
        scored = []
        for chunk, tf, length in zip(self.chunks, self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            terms = set(_terms(query)) - _STOP_WORDS
            score = sum(self.idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in terms if t in tf)
            scored.append((chunk, score))
        scored.sort(key=lambda item: -item[1])
        return [item for item in scored[:k] if item[1] > 0]


# -- citation explanations ------------------------------------------------------------


def verdict(j: Judgment) -> str:
    if j.score is None:
        return "unjudged"
    return f"{'relevant' if j.relevant else 'not relevant'}, score {j.score:.3f}{', forced' if j.forced else ''}"


def print_cited_answer(answer: str, sources: Sequence[ContextSource]) -> None:
    """The answer, then each numbered source with rank1's explanation of why it is there."""
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    print(
        "\nAnswer:\n"
        + textwrap.fill(" ".join(answer.split()) or "(empty)", 100, initial_indent="  ", subsequent_indent="  ")
    )
    print("\nSources (each with rank1's rationale: its conclusion, quoted from its reasoning):")
    for number, source in enumerate(sources, start=1):
        use = "cited in the answer" if number in cited else "not cited"
        print(f"[{number}] {source.source} ({source.assessment}; {use})")
        print(f"    why (rank1): {source.rationale or '(no reasoning within the budget)'}")
    if not sources:
        print("(none: rank1 kept no source)")


# -- agents ----------------------------------------------------------------------------

SEARCH_AGAIN = "rank1 judged none of the retrieved sources relevant"
"""What a retrieval tool says when nothing passed rank1, so that the agent searches again."""


def keywords(question: str) -> str:
    """A second, keyword-only query: how the offline stand-in agent rephrases a failed search."""
    return " ".join(t for t in _terms(question) if t not in _STOP_WORDS)
