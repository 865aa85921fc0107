"""Relevance templates: the rank1 paper's dataset prompts (Table 10) and user templates, texts in which
the query replaces the marker ``FILL_QUERY_HERE``; the result takes the query's place in rank1's prompt."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from rank1_integrations.core.protocol import QUERY_MARKER
from rank1_integrations.errors import InvalidInputError

__all__ = ["DATASET_PROMPTS", "apply_template", "resolve_template"]

_SUPPORT_OR_REFUTE = (
    "Claim: FILL_QUERY_HERE\n\nA relevant passage would provide evidence that either **supports** or "
    "**refutes** this claim. A passage with any information on any related subpart should be relevant."
)
_SAME_PROCESS = "Find a passage which uses the same mathematical process as this one: FILL_QUERY_HERE"

DATASET_PROMPTS: Mapping[str, str] = MappingProxyType(
    {
        "ArguAna": (
            "I am looking to write an essay and need to find counterarguments against this statement:\n\n"
            "FILL_QUERY_HERE\n\nDoes this passage have any counterargument or evidence that could be used to help me?"
        ),
        "BrightRetrieval": (
            "Can you find background information about the concepts used to answer the question:\n\n"
            "FILL_QUERY_HERE\n\nA passage is relevant if it contains background information about a "
            "**sub-concept** that someone might cite/link to when answering the above question."
        ),
        "BrightRetrieval_aops": (
            "Find different but similar math problems to FILL_QUERY_HERE\n\nA document is relevant if it uses "
            "the same class of functions and shares **any** overlapping techniques."
        ),
        "BrightRetrieval_leetcode": (
            "I am looking to find different problems that share similar data structures (of any kind) or "
            "algorithms (e.g. DFS, DP, sorting, traversals, etc.). I am looking for problems that share one or "
            "both of these similarities to this:\n\nFILL_QUERY_HERE\n\nDoes this passage share any similarities? "
            "e.g. if there was a textbook on leetcode problems, this would be in the same book even though it "
            "could be in a different chapter."
        ),
        "BrightRetrieval_pony": (
            "I will use the programming language pony. Problem: FILL_QUERY_HERE\n\nBut to solve the problem "
            "above, I need to know things about pony. A passage is relevant if it contains docs that match any "
            "part (even basic parts) of the code I will have to write for the above program."
        ),
        "BrightRetrieval_theoremqa_questions": _SAME_PROCESS,
        "BrightRetrieval_theoremqa_theorems": _SAME_PROCESS,
        "ClimateFEVER": _SUPPORT_OR_REFUTE,
        "DBPedia": (
            "I am looking to write an essay on this topic and need as much related background information to "
            "help me. The topic is:\n\nFILL_QUERY_HERE\n\nIf the passage provides any background information "
            "that could be connected it is relevant."
        ),
        "FiQA2018": "FILL_QUERY_HERE Find a passage that would be a good answer from StackExchange.",
        "NFCorpus": (
            "Topic: FILL_QUERY_HERE\n\nGiven the above topic, I need to learn about all aspects of it. It does "
            "not need to be directly relevant, only tangentially informational. Please mark as relevant any "
            "passages with even weak connections. I need to learn fast for my job, which means I need to "
            "understand each part individually.\n\nAgain remember, any connection means relevant even if "
            "indirect. So if it is not addressed, that is okay \u2013 it does not need to be explicitly.\n\n"
            "Find me passages with any type of connection, including weak connections!!!!"
        ),
        "SCIDOCS": (
            "papers that could be cited in FILL_QUERY_HERE. Anything with even indirect relevance should be "
            "relevant. This includes papers in the same broader field of science"
        ),
        "SciFact": _SUPPORT_OR_REFUTE,
        "TRECCOVID": "FILL_QUERY_HERE If the article answers any part of the question it is relevant.",
        "Touche2020": "FILL_QUERY_HERE **any** arguments for or against",
    }
)


def resolve_template(template: str | None) -> str | None:
    """Accept a dataset name from :data:`DATASET_PROMPTS` or a text containing ``FILL_QUERY_HERE``."""
    if template is None:
        return None
    if not isinstance(template, str):
        raise InvalidInputError(f"template must be a string or None, got {type(template).__name__}")
    if template in DATASET_PROMPTS:
        return DATASET_PROMPTS[template]
    if QUERY_MARKER not in template:
        names = ", ".join(sorted(DATASET_PROMPTS))
        raise InvalidInputError(
            f"template must contain the marker {QUERY_MARKER!r} (where the query goes) "
            f"or be one of the paper's dataset prompts: {names}"
        )
    return template


def apply_template(template: str | None, query: str) -> str:
    """The query as rank1 sees it: the template with every marker replaced, or the query itself."""
    return query if template is None else template.replace(QUERY_MARKER, query)
