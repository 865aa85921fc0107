"""Pure protocol logic: prompt bytes, forced-answer trimming, scoring, templates."""

from __future__ import annotations

import math

import pytest

from rank1_integrations.core.protocol import (
    STOP_STRINGS,
    label_probability,
    prompt_body,
    reasoning_for_forced_answer,
)
from rank1_integrations.core.templates import DATASET_PROMPTS, apply_template, resolve_template
from rank1_integrations.errors import InvalidInputError


def test_prompt_body_is_rank1s_prompt_byte_for_byte() -> None:
    expected = (
        "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
        "Query: what is x\nPassage: x is y\n"
    )
    assert prompt_body("what is x", "x is y") == expected
    assert STOP_STRINGS == ("</think> true", "</think> false")


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("First point. Second point. Third is cut", "First point. Second point."),
        ("  Is it? Yes! And then", "Is it? Yes!"),
        ("no sentence end at all ", "no sentence end at all"),
        ("Ends cleanly.", "Ends cleanly."),
        ("", ""),
        ("\nversion 3.1 is cut mid", "version 3."),
    ],
)
def test_forced_answer_reasoning_is_cut_back_to_the_last_sentence_end(generated: str, expected: str) -> None:
    assert reasoning_for_forced_answer(generated) == expected


def test_label_probability_matches_softmax_over_the_two_labels() -> None:
    lp_true, lp_false = math.log(0.3), math.log(0.1)
    assert label_probability(lp_true, lp_false) == pytest.approx(0.75, abs=1e-12)
    assert label_probability(-2.0, -2.0) == 0.5
    # Extreme gaps neither overflow nor lose the ordering.
    assert label_probability(0.0, -1e4) == 1.0
    assert label_probability(-1e4, 0.0) == 0.0
    # Invariant to a shared shift: raw logits give the same score as log-probabilities.
    assert label_probability(12.5, 10.0) == pytest.approx(label_probability(-0.5, -3.0), abs=1e-12)


def test_dataset_prompts_resolve_by_name_and_custom_templates_need_the_marker() -> None:
    assert resolve_template("SciFact") == DATASET_PROMPTS["SciFact"]
    assert resolve_template(None) is None
    assert apply_template(resolve_template("TRECCOVID"), "covid?") == (
        "covid? If the article answers any part of the question it is relevant."
    )
    custom = "Question: FILL_QUERY_HERE (again: FILL_QUERY_HERE)"
    assert apply_template(resolve_template(custom), "q") == "Question: q (again: q)"
    with pytest.raises(InvalidInputError, match="FILL_QUERY_HERE"):
        resolve_template("no marker here")
    with pytest.raises(InvalidInputError):
        resolve_template(42)  # type: ignore[arg-type]


def test_every_dataset_prompt_has_the_query_marker() -> None:
    assert len(DATASET_PROMPTS) >= 15
    for name, template in DATASET_PROMPTS.items():
        assert "FILL_QUERY_HERE" in template, name
