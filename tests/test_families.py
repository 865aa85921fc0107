"""rank1's model families: the tokenizer facts each relies on, prompts and truncation with and without BOS.

Each family's real tokenizer, rebuilt offline (``tests/models/real_tokenizers.py``); the tiny
imitations (``tests/models/families.py``) add what no released rank1 tokenizer has: ``<think>``
as a token. Expected ids come from the tokenizer's own whole-string call, as the rank1 authors'
code tokenizes.
"""

from __future__ import annotations

import logging

import pytest

from rank1_integrations import Rank1Reranker
from rank1_integrations.core.profiles import PROFILES, mismatches, profile_for, tokenizer_facts
from rank1_integrations.core.prompting import PromptBuilder
from rank1_integrations.core.tokenization import HFPromptTokenizer
from tests.models.families import FAMILIES
from tests.models.real_tokenizers import REAL
from tests.test_reranker_drivers import DeadEngine

QUERY = "what does the len function return"
PASSAGES = [
    "Return the length (the number of items) of an object. " * 40,
    "日本語のテキスト、café crème — 🙂🙃 emoji and accents. " * 30,
    "<s> <|begin_of_text|> </think> true: special-token strings as data. " * 20,
]
PROFILE = {profile.family: profile for profile in PROFILES}


@pytest.fixture(scope="module", params=sorted(REAL))
def family(request, real_model_dir) -> tuple[str, object, HFPromptTokenizer]:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(real_model_dir(request.param)))
    return request.param, hf, HFPromptTokenizer(hf)


def test_each_family_has_the_facts_of_its_profile(family) -> None:
    name, _, tokenizer = family
    facts = tokenizer_facts(tokenizer)
    assert None not in facts.label_ids  # " true" / " false" are single tokens
    assert facts.think_ids == (None, None)  # <think> is text in rank1 (see the think-token variants below)
    assert facts.leading == ((REAL[name].bos,) if REAL[name].bos else ())
    assert mismatches(PROFILE[name], facts) == []
    others = [p for p in PROFILES if p.bos != PROFILE[name].bos]
    assert any("prompts start with" in m for p in others for m in mismatches(p, facts))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_think_tokens_are_found_when_the_vocabulary_has_them(name: str, family_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(family_tokenizer_dir(name)))
    facts = tokenizer_facts(HFPromptTokenizer(hf))
    assert facts.think_ids == tuple(hf.convert_tokens_to_ids(t) for t in ("<think>", "</think>"))
    assert mismatches(PROFILE[name], facts) == []


def test_profiles_name_every_released_model() -> None:
    assert profile_for("jhu-clsp/rank1-7b") is PROFILE["qwen2.5"]
    assert profile_for("jhu-clsp/rank1-32b-awq") is PROFILE["qwen2.5"]
    assert profile_for("/models/rank1-llama3-8b/") is PROFILE["llama3"]
    assert profile_for("jhu-clsp/rank1-mistral-2501-24b-awq") is PROFILE["mistral"]
    assert profile_for("Qwen/Qwen2.5-7B") is None
    assert sum(len(p.models) for p in PROFILES) == 13


def test_a_known_rank1_model_with_another_tokenizer_is_logged(family, caplog) -> None:
    name, _, tokenizer = family
    engine = DeadEngine(tokenizer)
    engine.model_name = "jhu-clsp/rank1-llama3-8b" if name != "llama3" else "jhu-clsp/rank1-7b"  # type: ignore[misc]
    with caplog.at_level(logging.WARNING, logger="rank1_integrations"):
        Rank1Reranker(engine, max_reasoning_tokens=64)
    assert "tokenizer differs: prompts start with" in caplog.text


@pytest.mark.parametrize("passage", ["a short passage.", PASSAGES[1]], ids=["ascii", "multibyte"])
def test_prompt_ids_equal_the_authors_whole_string_tokenization(family, passage: str) -> None:
    _, hf, tokenizer = family
    prompt = PromptBuilder(tokenizer, template=None, max_prompt_tokens=5000).build(QUERY, passage)
    assert list(prompt.token_ids) == hf(prompt.text)["input_ids"]


def test_special_token_strings_in_a_passage_stay_characters(family) -> None:
    _, _, tokenizer = family
    prompt = PromptBuilder(tokenizer, template=None, max_prompt_tokens=5000).build(QUERY, PASSAGES[2])
    body = prompt.token_ids[len(tokenizer.leading_ids) :]
    assert not set(body) & set(tokenizer.control_tokens)
    assert tokenizer.decode(body) == prompt.text


@pytest.mark.parametrize("passage", PASSAGES, ids=["ascii", "multibyte", "special-strings"])
@pytest.mark.parametrize("budget", [60, 97, 150])
def test_truncation_keeps_a_prefix_of_the_passage_and_counts_what_it_dropped(family, passage: str, budget: int) -> None:
    _, hf, tokenizer = family
    builder = PromptBuilder(tokenizer, template=None, max_prompt_tokens=budget)
    prompt = builder.build(QUERY, passage)
    assert prompt.truncated
    assert len(prompt.token_ids) <= budget
    head, _, rest = prompt.text.partition("\nPassage: ")
    cut = rest.removesuffix("\n<think>")
    assert head.endswith(QUERY)
    assert cut
    assert passage.startswith(cut)  # whole characters: no U+FFFD, no BOS string
    assert "\ufffd" not in cut
    # A BOS only at the start, once.
    leading = list(tokenizer.leading_ids)
    assert list(prompt.token_ids[: len(leading)]) == leading
    assert all(prompt.token_ids.count(i) == 1 for i in leading)
    whole = PromptBuilder(tokenizer, template=None, max_prompt_tokens=10_000).build(QUERY, passage)
    assert prompt.passage_tokens_dropped == len(whole.token_ids) - len(prompt.token_ids)
    assert prompt.passage_tokens_dropped > 0
    if "<s>" not in passage:  # the authors' count, independently
        assert len(whole.token_ids) == len(hf(whole.text)["input_ids"])
        assert len(prompt.token_ids) == len(hf(prompt.text)["input_ids"])


def test_a_passage_cut_inside_a_character_keeps_whole_characters(family) -> None:
    _, _, tokenizer = family
    emoji = "🙂" * 200  # four bytes each: a cut can fall inside one
    for budget in range(60, 90):
        prompt = PromptBuilder(tokenizer, template=None, max_prompt_tokens=budget).build(QUERY, emoji)
        cut = prompt.text.partition("\nPassage: ")[2].removesuffix("\n<think>")
        assert set(cut) <= {"🙂"}
        assert len(prompt.token_ids) <= budget
