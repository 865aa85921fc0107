"""Score fidelity: rank1 judgments on the embedded engine vs an independent float64 reference.

Builds (or reuses) the scripted test model, judges its known (query, passage) pairs with
``Rank1Reranker`` (natural and forced-answer paths), recomputes every score with a plain
transformers forward pass in float64 (``tests/reference.py``), and prints the differences.

    python -m bench.fidelity
"""

from __future__ import annotations

import tests.conftest as test_settings  # sets the CPU engine environment before vLLM loads
from rank1_integrations import Rank1Reranker
from rank1_integrations.testing.tiny_models import (
    JOIN_PASSAGE,
    JOIN_QUERY,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
    build_scripted_model,
)
from tests import reference


def main() -> None:
    model_dir = build_scripted_model(test_settings._CACHE / "scripted")
    reranker = Rank1Reranker.from_vllm(
        str(model_dir), max_reasoning_tokens=test_settings.SCRIPTED_BUDGET, cache=False, **test_settings.ENGINE_KWARGS
    )
    cases = [(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE, OPEN_PASSAGE]), (JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE])]
    worst = 0.0
    for (query, passages), judgments in zip(cases, reranker.judge_many(cases), strict=True):
        for passage, judgment in zip(passages, judgments, strict=True):
            assert judgment.score is not None
            score = reference.forced_score if judgment.forced else reference.natural_score
            expected = score(model_dir, query, passage, judgment.reasoning)
            diff = abs(expected - judgment.score)
            worst = max(worst, diff)
            path = "forced " if judgment.forced else "natural"
            print(f"{path} score {judgment.score:.6f}  reference(float64) {expected:.6f}  |diff| {diff:.2e}")
    print(f"max |diff| {worst:.2e}")


if __name__ == "__main__":
    main()
