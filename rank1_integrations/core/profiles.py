"""The rank1 model families (AWQ variants share the base's tokenizer) and the tokenizer facts the protocol
relies on: single-token labels, a BOS before every prompt, an EOS that forces the answer like the budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from rank1_integrations.core.protocol import FALSE_LABEL, THINK_CLOSE, THINK_OPEN, TRUE_LABEL
from rank1_integrations.core.tokenization import PromptTokenizer


@dataclass(frozen=True)
class ModelProfile:
    """One rank1 family: its base model, its released Hugging Face ids and its tokenizer's BOS (or None) and EOS."""

    family: str
    base_model: str
    models: tuple[str, ...]
    bos: str | None
    eos: str


PROFILES: tuple[ModelProfile, ...] = (
    ModelProfile(
        "qwen2.5",
        "Qwen2.5 (0.5B-32B)",
        tuple(f"jhu-clsp/rank1-{size}" for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b"))
        + tuple(f"jhu-clsp/rank1-{size}-awq" for size in ("7b", "14b", "32b")),
        bos=None,
        eos="<|endoftext|>",
    ),
    ModelProfile(
        "llama3",
        "Llama 3.1 8B",
        ("jhu-clsp/rank1-llama3-8b", "jhu-clsp/rank1-llama3-8b-awq"),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
    ),
    ModelProfile(
        "mistral",
        "Mistral-Small-24B-Base-2501 (tekken tokenizer)",
        ("jhu-clsp/rank1-mistral-2501-24b", "jhu-clsp/rank1-mistral-2501-24b-awq"),
        bos="<s>",
        eos="</s>",
    ),
)


def profile_for(model: str) -> ModelProfile | None:
    """The profile of a rank1 model, by hub id or by a folder named like one; None for other models."""
    name = PurePath(model.rstrip("/")).name.lower()
    for profile in PROFILES:
        if any(name == PurePath(known).name for known in profile.models):
            return profile
    return None


@dataclass(frozen=True)
class TokenizerFacts:
    """What a tokenizer does with the protocol's strings."""

    label_ids: tuple[int | None, int | None]  # " true", " false" where each is a single token
    think_ids: tuple[int | None, int | None]  # <think>, </think> where each is a token of its own
    leading: tuple[str, ...]  # the text of what goes before every prompt (a BOS)
    controls: frozenset[str]  # the vocabulary's added and special tokens


def tokenizer_facts(tokenizer: PromptTokenizer) -> TokenizerFacts:
    controls = tokenizer.control_tokens
    return TokenizerFacts(
        label_ids=(_single(tokenizer, TRUE_LABEL), _single(tokenizer, FALSE_LABEL)),
        think_ids=(tokenizer.single_token_id(THINK_OPEN), tokenizer.single_token_id(THINK_CLOSE)),
        leading=tuple(controls.get(i, tokenizer.decode([i])) for i in tokenizer.leading_ids),
        controls=frozenset(controls.values()),
    )


def mismatches(profile: ModelProfile, facts: TokenizerFacts) -> list[str]:
    """Where a tokenizer differs from what ``profile``'s family needs (empty when it does not)."""
    found = []
    if None in facts.label_ids:
        found.append(f"{TRUE_LABEL!r} and {FALSE_LABEL!r} are not both single tokens")
    expected_leading = (profile.bos,) if profile.bos else ()
    if facts.leading != expected_leading:
        found.append(f"prompts start with {list(facts.leading)}, {profile.family} models with {list(expected_leading)}")
    if profile.eos not in facts.controls:
        found.append(f"the EOS {profile.eos!r} is not a control token")
    return found


def _single(tokenizer: PromptTokenizer, text: str) -> int | None:
    ids = tokenizer.encode_plain(text)
    return ids[0] if len(ids) == 1 else None
