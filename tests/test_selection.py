"""The framework-free selection logic: filter order, empty and unjudged documents, context blocks.

Pure logic on plain ``Judgment`` objects; the adapters' tests run the same rules on a real engine.
"""

from __future__ import annotations

import math

import pytest

from rank1_integrations import InvalidInputError, Judgment, Rank1Error
from rank1_integrations.adapters.context import ContextSource, format_context
from rank1_integrations.adapters.selection import (
    RANK1_METADATA_KEYS,
    JudgingPlan,
    JudgmentsSoFar,
    Pick,
    SelectionPolicy,
    needs_judging,
    plan_judging,
    rank1_metadata,
    select,
)
from rank1_integrations.settings import Rank1Settings


def judged(index: int, score: float, reasoning: str = "", **kwargs) -> Judgment:
    return Judgment(index=index, score=score, relevant=score > 0.5, reasoning=reasoning or f"r{index}", **kwargs)


def unjudged(index: int) -> Judgment:
    return Judgment(index=index, score=None, relevant=None, reasoning="", error="BackendError: boom")


def run(texts: list[str], scores: list[float | None], **policy) -> list[tuple[int, str, str]]:
    """(document index, status, kept_by) of the picks; ``scores`` are for the plan's passages."""
    plan = plan_judging(texts)
    judgments = [unjudged(i) if s is None else judged(i, s) for i, s in enumerate(scores)]
    return [(p.index, p.status, p.kept_by) for p in select(SelectionPolicy(**policy), plan, judgments)]


# -- policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_n": -1}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"top_n": 2.0}, "top_n"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"score_threshold": -0.1}, "score_threshold"),
        ({"score_threshold": math.nan}, "score_threshold"),
        ({"score_threshold": True}, "score_threshold"),
        ({"min_keep": -1}, "min_keep"),
        ({"top_n": 1, "min_keep": 2}, r"min_keep \(2\) cannot exceed top_n \(1\)"),
        ({"top_n": 0, "min_keep": 1}, "cannot exceed"),
    ],
)
def test_policy_rejects_bad_settings(settings, message):
    with pytest.raises(InvalidInputError, match=message):
        SelectionPolicy(**settings)


def test_policy_accepts_edges():
    assert SelectionPolicy(top_n=None, min_keep=5).top_n is None
    assert SelectionPolicy(top_n=0).min_keep == 0
    assert SelectionPolicy(score_threshold=0).score_threshold == 0
    assert SelectionPolicy(score_threshold=1.0, min_keep=3).min_keep == 3


# -- plan ------------------------------------------------------------------------------


def test_plan_sends_each_distinct_non_empty_text_once():
    plan = plan_judging(["b", "", "a", "b", "  \n", "a", "c"])
    assert plan == JudgingPlan(passages=("b", "a", "c"), slots=(0, None, 1, 0, None, 1, 2))


def test_plan_can_refuse_empty_texts():
    with pytest.raises(InvalidInputError, match=r"indices \[1, 3\] have no text"):
        plan_judging(["a", "", "b", " "], empty_text="raise")
    assert plan_judging(["a"], empty_text="raise").passages == ("a",)
    with pytest.raises(InvalidInputError, match="empty_text"):
        plan_judging(["a"], empty_text="drop")  # type: ignore[arg-type]


def test_needs_judging():
    assert needs_judging(SelectionPolicy(), plan_judging(["a"]))
    assert not needs_judging(SelectionPolicy(), plan_judging([]))
    assert not needs_judging(SelectionPolicy(), plan_judging(["", " "]))
    assert not needs_judging(SelectionPolicy(top_n=0), plan_judging(["a"]))


# -- select: the order threshold -> top_n -> min_keep ----------------------------------


def test_ranks_by_score_and_filters_on_the_verdict_by_default():
    texts = ["a", "b", "c", "d"]
    assert run(texts, [0.6, 0.2, 0.9, 0.7], top_n=None) == [
        (2, "judged", "relevance"),
        (3, "judged", "relevance"),
        (0, "judged", "relevance"),
    ]


def test_verdict_not_score_decides_without_threshold():
    plan = plan_judging(["a", "b"])
    # without a threshold only the verdict counts, whatever the score says
    judgments = [
        Judgment(0, 0.4, True, "x", forced=True),
        Judgment(1, 0.45, False, "y"),
    ]
    assert [p.index for p in select(SelectionPolicy(), plan, judgments)] == [0]


def test_threshold_is_inclusive_and_replaces_the_verdict():
    texts = ["a", "b", "c"]
    assert run(texts, [0.3, 0.9, 0.2], score_threshold=0.3) == [(1, "judged", "relevance"), (0, "judged", "relevance")]
    assert run(texts, [0.3, 0.9, 0.2], score_threshold=0.95) == []
    assert [i for i, _, _ in run(texts, [0.3, 0.9, 0.2], score_threshold=0.0, top_n=None)] == [1, 0, 2]


def test_ties_keep_input_order():
    assert [i for i, _, _ in run(["a", "b", "c"], [0.7, 0.9, 0.7], top_n=None)] == [1, 0, 2]


@pytest.mark.parametrize(("top_n", "expected"), [(None, [3, 1, 0]), (0, []), (1, [3]), (2, [3, 1]), (99, [3, 1, 0])])
def test_top_n_cuts_after_the_threshold(top_n, expected):
    # d (0.95) > b (0.8) > a (0.6) pass; c (0.1) fails the verdict
    assert [i for i, _, _ in run(["a", "b", "c", "d"], [0.6, 0.8, 0.1, 0.95], top_n=top_n)] == expected


def test_top_n_zero_needs_no_judgments():
    assert select(SelectionPolicy(top_n=0), plan_judging(["a", "b"]), []) == []


def test_empty_input():
    assert select(SelectionPolicy(min_keep=3), plan_judging([]), []) == []


def test_min_keep_adds_the_best_rejected_after_threshold_and_top_n():
    texts = ["a", "b", "c", "d"]
    assert run(texts, [0.2, 0.4, 0.1, 0.3], min_keep=2) == [(1, "judged", "min_keep"), (3, "judged", "min_keep")]
    assert run(texts, [0.9, 0.4, 0.1, 0.3], min_keep=2) == [(0, "judged", "relevance"), (1, "judged", "min_keep")]
    # enough passed: min_keep adds nothing
    assert run(texts, [0.9, 0.8, 0.1, 0.3], min_keep=2) == [(0, "judged", "relevance"), (1, "judged", "relevance")]
    # top_n caps the passing ones first; min_keep <= top_n so it never exceeds the cap
    assert run(texts, [0.9, 0.8, 0.7, 0.6], top_n=2, min_keep=2) == [
        (0, "judged", "relevance"),
        (1, "judged", "relevance"),
    ]
    # more than there are
    assert len(run(texts, [0.2, 0.4, 0.1, 0.3], top_n=None, min_keep=10)) == 4


def test_unjudged_never_pass_and_come_after_judged_rejects_for_min_keep():
    texts = ["a", "b", "c", "d"]
    scores: list[float | None] = [None, 0.3, None, 0.9]
    assert run(texts, scores, score_threshold=0.0, top_n=None) == [
        (3, "judged", "relevance"),
        (1, "judged", "relevance"),
    ]
    assert run(texts, scores, top_n=None, min_keep=4) == [
        (3, "judged", "relevance"),
        (1, "judged", "min_keep"),
        (0, "unjudged", "min_keep"),
        (2, "unjudged", "min_keep"),
    ]
    assert run(texts, scores, top_n=None, min_keep=3)[-1] == (0, "unjudged", "min_keep")


def test_empty_texts_score_zero_never_pass_the_verdict_and_never_fill_min_keep():
    texts = ["a", "", "b", "   "]
    assert run(texts, [0.2, 0.1], top_n=None) == []
    assert run(texts, [0.2, 0.1], top_n=None, min_keep=4) == [(0, "judged", "min_keep"), (2, "judged", "min_keep")]
    # a threshold of 0.0 keeps everything, empty texts last (in input order)
    assert run(texts, [0.2, 0.0], score_threshold=0.0, top_n=None) == [
        (0, "judged", "relevance"),
        (2, "judged", "relevance"),
        (1, "empty", "relevance"),
        (3, "empty", "relevance"),
    ]
    pick = select(SelectionPolicy(score_threshold=0.0), plan_judging([""]), [])[0]
    assert pick.judgment == Judgment(index=0, score=0.0, relevant=False, reasoning="", reasoned=False)


def test_duplicate_texts_share_one_judgment_and_all_come_back():
    plan = plan_judging(["x", "y", "x"])
    picks = select(SelectionPolicy(top_n=None), plan, [judged(0, 0.8, "same"), judged(1, 0.9)])
    assert [p.index for p in picks] == [1, 0, 2]
    assert picks[1].judgment is picks[2].judgment


def test_lost_judgments_fail_loudly():
    with pytest.raises(Rank1Error, match="1 judgments for 2 passages"):
        select(SelectionPolicy(), plan_judging(["a", "b"]), [judged(0, 0.9)])


def test_metadata_keys_and_values():
    j = Judgment(0, 0.25, False, "why", forced=True, reasoning_tokens=7, truncated=True)
    metadata = rank1_metadata(Pick(3, j, "judged", "min_keep"))
    assert tuple(metadata) == RANK1_METADATA_KEYS
    assert metadata == {
        "relevance_score": 0.25,
        "rank1_reasoning": "why",
        "rank1_rationale": "why",
        "rank1_relevant": False,
        "rank1_forced": True,
        "rank1_reasoning_tokens": 7,
        "rank1_truncated": True,
        "rank1_status": "judged",
        "rank1_kept_by": "min_keep",
        "rank1_error": None,
        "rank1_reasoning_effort": "full",
        "rank1_reasoned": True,
    }
    unreasoned = rank1_metadata(
        Pick(0, Judgment(0, 0.5, True, "", reasoning_effort="none", reasoned=False), "judged", None)
    )
    assert (unreasoned["rank1_reasoning_effort"], unreasoned["rank1_reasoned"]) == ("none", False)
    failed = rank1_metadata(Pick(0, unjudged(0), "unjudged", "min_keep"))
    assert failed["relevance_score"] is None
    assert failed["rank1_relevant"] is None
    assert failed["rank1_error"] == "BackendError: boom"


# -- context blocks ----------------------------------------------------------------------


LONG_REASONING = "The query asks about len. " * 40 + "The passage defines len. So it answers the query."


def test_format_context_shows_the_rationale_by_default_and_the_full_reasoning_on_request():
    sources = [
        ContextSource("  Len returns a count. ", "len.txt", 0.91, True, LONG_REASONING, "So it answers the query."),
        ContextSource("Sorting.", "sorted.txt", 0.1, False, "About sorting.", "About sorting.", kept_by="min_keep"),
        ContextSource("Broken.", "x", None, None, "", status="unjudged", kept_by="min_keep"),
        ContextSource("", "e", 0.0, False, "", status="empty"),
    ]
    assert format_context(sources) == (
        "[1] len.txt (relevant, score 0.91)\nLen returns a count.\nrank1's reasoning: So it answers the query.\n\n"
        "[2] sorted.txt (not relevant, score 0.10, kept only to reach the minimum number of sources)\n"
        "Sorting.\nrank1's reasoning: About sorting.\n\n"
        "[3] x (not judged)\nBroken.\nrank1's reasoning: (none given)\n\n"
        "[4] e (empty text, not judged)\n\nrank1's reasoning: (none given)"
    )
    full = format_context(sources[:1], reasoning="full")
    assert (
        full == f"[1] len.txt (relevant, score 0.91)\nLen returns a count.\nrank1's reasoning: {LONG_REASONING.strip()}"
    )
    both = format_context(sources[:1], template="{rationale}|{full_reasoning}|{reasoning}", reasoning="full")
    assert both == f"So it answers the query.|{LONG_REASONING.strip()}|{LONG_REASONING.strip()}"
    assert (
        format_context(sources[:2], template="{number}|{source}|{score}", separator=";")
        == "1|len.txt|0.91;2|sorted.txt|0.10"
    )
    assert format_context([]) == ""
    with pytest.raises(InvalidInputError, match="'rationale' or 'full'"):
        format_context(sources, reasoning="short")  # type: ignore[arg-type]


def test_context_source_from_metadata():
    metadata = rank1_metadata(Pick(0, judged(0, 0.75, LONG_REASONING), "judged", "relevance"))
    source = ContextSource.from_metadata("t", "s", metadata)
    assert source == ContextSource(
        "t", "s", 0.75, True, LONG_REASONING, "The passage defines len. So it answers the query."
    )
    plain = ContextSource.from_metadata("t", "s", {"relevance_score": True})
    assert (plain.score, plain.status, plain.assessment, plain.rationale) == (None, "unjudged", "not judged", "")
    # metadata written without a rationale (older code, by hand): quoted from the reasoning
    older = {key: value for key, value in metadata.items() if key != "rank1_rationale"}
    assert ContextSource.from_metadata("t", "s", older) == source


# -- streamed judgments and settings shown -----------------------------------------------


def test_judgments_so_far_map_each_passage_to_its_documents_once():
    so_far = JudgmentsSoFar(plan_judging(["x", "", "y", "x"]))
    picks = so_far.add(judged(0, 0.8))
    assert [(p.index, p.status, p.kept_by) for p in picks] == [(0, "judged", None), (3, "judged", None)]
    with pytest.raises(Rank1Error, match="rank1 returned no judgment for passages \\[1\\]"):
        so_far.in_order()
    with pytest.raises(Rank1Error, match="passage 0 that was not expected"):
        so_far.add(judged(0, 0.8))
    assert [(p.index, p.status) for p in so_far.add(unjudged(1))] == [(2, "unjudged")]
    assert [j.index for j in so_far.in_order()] == [0, 1]


def test_settings_show_server_urls_without_credentials():
    settings = Rank1Settings(servers=("https://user:pw@host:8000/v1", "http://y/v1"), model="m", api_key="sk-1")
    assert settings.model_dump()["servers"] == ("https://host:8000/v1", "http://y/v1")
    for text in (repr(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "pw@" not in text
        assert "sk-1" not in text
        assert "https://host:8000/v1" in text
    assert settings.servers[0] == "https://user:pw@host:8000/v1"  # still used as given


def test_a_broken_score_never_upsets_the_ranking_of_the_others():
    texts = ["a", "b", "c", "d"]
    plan = plan_judging(texts)
    judgments = [judged(0, 0.012), Judgment(1, math.nan, True, "r1"), judged(2, 0.992), judged(3, 0.5)]
    picks = select(SelectionPolicy(top_n=None, score_threshold=0.0, min_keep=4), plan, judgments)
    assert [(p.index, p.status, p.kept_by) for p in picks] == [
        (2, "judged", "relevance"),
        (3, "judged", "relevance"),
        (0, "judged", "relevance"),
        (1, "unjudged", "min_keep"),
    ]
