"""The rationale: rank1's conclusion quoted from its reasoning, bounded, never cut inside a word.

Shown on hand-written traces in rank1's style (it thinks like DeepSeek-R1: "Okay, let's
see ...", second thoughts, then a conclusion) and on the reasoning the scripted test model
writes; the adapters' tests show it on the engine's own output.
"""

from __future__ import annotations

import pytest

from rank1_integrations import Judgment
from rank1_integrations.core.rationale import DEFAULT_RATIONALE_CHARS, rationale
from tests.models.tiny_models import DEFAULT_SCRIPT, OPEN_REASONING

RELEVANT_TRACE = """Okay, let's see. The user is asking about the side effects of metformin in elderly patients.
The passage talks about a study of metformin use in adults over 65. It mentions gastrointestinal
problems such as nausea and diarrhea, and vitamin B12 deficiency with long-term use.

Wait, does it actually say these are side effects? Yes: "adverse effects reported included" those.
So the passage directly lists side effects of metformin in older adults. Therefore, the passage is
relevant to the query.
"""

REJECTED_TRACE = """Alright, I need to figure out whether this passage helps answer when the Eiffel Tower was built.
The passage describes the tower's height and how many people visit it each year. Hmm, maybe the
construction is mentioned somewhere? It says the tower "has welcomed visitors since its opening",
but it never gives a year. So the passage does not answer the question about when it was built.
The answer is false."""

SECOND_THOUGHTS_TRACE = (
    "The query asks for the capital of Australia. The passage says Sydney is the largest city. "
    "So the passage is not relevant, since it never names the capital. "
    "Wait, let me read it again. The last sentence says Canberra was chosen as the capital in 1908. "
    "Therefore the passage is relevant after all: it names Canberra as the capital. "
    "I should double-check nothing contradicts this."
)

NO_MARKER_TRACE = (
    "The query is about bread. The passage lists flour, water, salt and yeast. Baking time is forty minutes."
)

LONG_CONCLUSION = (
    "Therefore the passage is relevant, because it explains in considerable detail how the "
    + "retrieval pipeline ranks candidate documents with a cross-encoder, " * 8
    + "which is exactly what the query asks about."
)


def test_quotes_the_conclusion_and_the_sentence_before_it():
    assert rationale(RELEVANT_TRACE) == (
        "So the passage directly lists side effects of metformin in older adults. "
        "Therefore, the passage is relevant to the query."
    )
    assert rationale(REJECTED_TRACE) == (
        "So the passage does not answer the question about when it was built. The answer is false."
    )


def test_the_last_conclusion_wins_over_an_earlier_one_and_over_trailing_chatter():
    assert rationale(SECOND_THOUGHTS_TRACE) == (
        "The last sentence says Canberra was chosen as the capital in 1908. "
        "Therefore the passage is relevant after all: it names Canberra as the capital."
    )


def test_without_a_stated_conclusion_the_last_sentences_are_quoted():
    assert rationale(NO_MARKER_TRACE) == "The passage lists flour, water, salt and yeast. Baking time is forty minutes."


def test_bounded_and_never_cut_inside_a_word():
    short = rationale(LONG_CONCLUSION)
    assert len(short) <= DEFAULT_RATIONALE_CHARS
    assert short.endswith("\u2026")
    words = short[:-1].split()
    assert words == LONG_CONCLUSION.split()[: len(words)]  # every word whole, in order
    for limit in range(20, 130, 3):  # longer than any word of these traces
        for trace in (RELEVANT_TRACE, REJECTED_TRACE, SECOND_THOUGHTS_TRACE, LONG_CONCLUSION):
            cut = rationale(trace, max_chars=limit)
            assert 0 < len(cut) <= limit
            body, normalized = cut.removesuffix("\u2026"), " ".join(trace.split())
            at = normalized.find(body)  # an excerpt of rank1's own words ...
            assert at >= 0, (limit, cut)
            before, after = normalized[at - 1 : at] if at else "", normalized[at + len(body) :][:1]
            assert not before.isalnum(), (limit, cut)  # ... starting and ending at word boundaries
            assert not after.isalnum(), (limit, cut)


def test_a_preceding_sentence_is_added_only_when_it_fits():
    conclusion = "Therefore, the passage is relevant to the query."
    assert rationale(RELEVANT_TRACE, max_chars=len(conclusion)) == conclusion
    assert rationale(RELEVANT_TRACE, max_sentences=1) == conclusion


def test_empty_and_odd_input():
    assert rationale("") == ""
    assert rationale("  \n\t ") == ""
    assert rationale("no sentence end") == "no sentence end"
    assert rationale("x" * 50, max_chars=10) == "x" * 9 + "\u2026"  # no space to cut at: the only hard cut
    with pytest.raises(ValueError, match="max_chars"):
        rationale("a.", max_chars=1)
    with pytest.raises(ValueError, match="max_sentences"):
        rationale("a.", max_sentences=0)


def test_judgment_rationale_on_the_scripted_models_reasoning():
    """The test model's reasoning, as the engine returns it (see the adapter tests for the live run)."""
    natural = [item.completion.split("</think>")[0] for item in DEFAULT_SCRIPT if item.forced_label is None]
    for reasoning in natural:  # one sentence each: quoted whole
        assert Judgment(index=0, score=0.9, relevant=True, reasoning=reasoning).rationale == reasoning
    forced = Judgment(index=0, score=0.2, relevant=False, reasoning=OPEN_REASONING, forced=True)
    assert forced.rationale == (
        "A file object is not a count of items, and an error is not a length. "
        "The passage talks about files and errors, so it does not answer the query."
    )
    assert Judgment(index=0, score=None, relevant=None, reasoning="", error="down").rationale == ""
