"""Golden regression: each reproducible test model sends, generates and scores what ``tests/golden/`` says.

A vLLM, transformers or tokenizers upgrade that changes an id, a text or a score fails
here; a changed model build is told apart by its weights digest. See ``tests/golden.py``
for what goes into the files and how to regenerate them after a deliberate change.
"""

from __future__ import annotations

import pytest

from tests import golden

pytestmark = [pytest.mark.engine, pytest.mark.embedded]  # its engines are requested by name


FIXTURES = {"chaos": ("chaos_backend", "chaos_model_dir"), "smollm2": ("smollm2_backend", "smollm2_dir")}


@pytest.fixture(params=sorted(golden.CASES))
def model(request) -> tuple[str, object, object]:
    if request.param not in FIXTURES:  # rank1's real tokenizers
        engine, folder = (request.getfixturevalue(name)(request.param) for name in ("real_backend", "real_model_dir"))
        return request.param, engine, folder
    engine, folder = (request.getfixturevalue(name) for name in FIXTURES[request.param])
    return request.param, getattr(engine, "backend", engine), folder


def test_the_engine_sends_generates_and_scores_what_the_golden_file_says(model) -> None:
    name, backend, model_dir = model
    want = golden.load(name)
    if golden.weights_digest(model_dir) != want["weights_sha256"]:
        pytest.fail(
            f"the {name} test model's weights changed (its builder or the libraries that build it), so the "
            f"golden file cannot tell an engine change: if that is deliberate, python -m tests.golden --update {name}"
        )
    got = golden.collect(name, backend, model_dir)
    assert len(got["cases"]) == len(want["cases"])
    for g, w in zip(got["cases"], want["cases"], strict=True):
        where = f"{name}: {w['query']!r} / {w['passage'][:30]!r}, budget {w['budget']}"
        assert g["prompt_ids"] == w["prompt_ids"], f"{where}: the prompt's token ids changed"
        assert g["generated_ids"] == w["generated_ids"], f"{where}: the engine generated other tokens"
        assert (g["generated_text"], g["finish_reason"]) == (w["generated_text"], w["finish_reason"]), where
        assert (g["forced"], g["reasoning"]) == (w["forced"], w["reasoning"]), where
        assert g["scored_ids"] == w["scored_ids"], f"{where}: the scored (forced) prompt changed"
        assert g["score"] == pytest.approx(w["score"], abs=golden.SCORE_TOLERANCE), f"{where}: the engine's score"
        assert g["reference_score"] == pytest.approx(w["reference_score"], abs=golden.REFERENCE_TOLERANCE), (
            f"{where}: the float64 reference's score (transformers)"
        )
