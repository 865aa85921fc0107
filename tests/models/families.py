"""Tiny offline tokenizers of rank1's families with ``<think>`` tokens, and a random model that writes control tokens.

rank1's real tokenizers (:mod:`tests.models.real_tokenizers`) have ``<think>``/``</think>`` as
text; a fine-tuned rank1 may add them as tokens of their own. :func:`build_family_tokenizer`
trains a small tokenizer with a family's settings (pattern, NFC, BOS, EOS, a few control
tokens) and ``<think>``/``</think>`` as special tokens (the same corpus as the tiny test models).

:func:`build_chaos_model` is a random-weight ``LlamaForCausalLM`` on the Llama 3 style
tokenizer, nudged so that greedy decoding writes control tokens (``<think>``,
``</think>``, BOS, EOS, ``<|eot_id|>``) and lone bytes of multi-byte characters (U+FFFD in
the text, characters cut at the budget): what a forced answer must survive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.models.building import chained_model, staged_build, train_byte_level_bpe
from tests.models.tiny_models import (
    _QWEN2_SPLIT,
    END_THINK_TOKEN,
    FALSE_LABEL,
    THINK_TOKEN,
    TINY_QWEN2,
    TRUE_LABEL,
    VOCAB_SIZE,
    _corpus,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHAOS_LLAMA",
    "CHAOS_REASONING",
    "FAMILIES",
    "TokenizerFamily",
    "build_chaos_model",
    "build_family_tokenizer",
    "chaos_token_ids",
]

_BUILDER_VERSION = "3"  # bump when the builders change what they produce


@dataclass(frozen=True)
class TokenizerFamily:
    """The tokenizer settings of one family, as its released tokenizer has them."""

    name: str
    split_pattern: str
    """The pre-tokenizer's regex (then byte-level)."""
    nfc: bool
    bos: str | None
    """Added before every prompt (a post-processor), or None."""
    eos: str
    specials: tuple[str, ...]
    """Other control tokens of the family (a few of them)."""
    clean_up_spaces: bool
    """transformers' ``clean_up_tokenization_spaces`` in the released tokenizer config."""


_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

FAMILIES: dict[str, TokenizerFamily] = {
    "qwen2.5": TokenizerFamily(
        "qwen2.5", _QWEN2_SPLIT, True, None, "<|endoftext|>", ("<|im_start|>", "<|im_end|>"), False
    ),
    "llama3": TokenizerFamily(
        "llama3",
        _LLAMA3_SPLIT,
        False,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"),
        True,
    ),
}

#: The chaos model's architecture: the tiny Qwen2's sizes (head_dim 32 for vLLM's CPU attention).
CHAOS_LLAMA: dict[str, int | bool | str] = dict(TINY_QWEN2)
#: What the chaos model writes after ``<think>``, one token each: a str is a token of the
#: vocabulary, an int a lone byte (0x80-0xFF: part of a multi-byte UTF-8 character, so the
#: text shows U+FFFD, or nothing when the budget cuts there). " <" "th" "ink" ">" spell
#: "<think>" in ordinary characters, as a model quoting a passage would.
CHAOS_REASONING: tuple[str | int, ...] = (
    " The", 0xE6, " passage", " <", "th", "ink", ">", " is", 0x80, "</think>", "<|eot_id|>", ".",
    "<|begin_of_text|>", " It", 0xE2, 0x82, " not", *range(0x83, 0x8E), "!",
    "<|reserved_special_token_0|>", "<|start_header_id|>", " and", "?", "<|end_header_id|>", "<|end_of_text|>",
)  # fmt: skip
# Each step of CHAOS_REASONING gets this much logit over the random weights (the random
# model alone writes short loops); the label rows are scaled so scores spread over (0, 1).
_CHAOS_STEP, _CHAOS_LABEL_SCALE = 20.0, 40.0


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-character table, which byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


_BYTE_CHARS = _byte_chars()


def _train(family: TokenizerFamily) -> PreTrainedTokenizerBase:
    return train_byte_level_bpe(
        _corpus(),
        family.split_pattern,
        vocab_size=VOCAB_SIZE,
        nfc=family.nfc,
        eos=family.eos,
        bos=family.bos,
        specials=[family.eos, *([family.bos] if family.bos else []), *family.specials, THINK_TOKEN, END_THINK_TOKEN],
        hf_settings={"clean_up_tokenization_spaces": family.clean_up_spaces},
    )


def _spec_hash(kind: str, spec: dict[str, Any]) -> str:
    full = {
        "builder_version": _BUILDER_VERSION,
        "kind": kind,
        **spec,
        "libs": {n: version(n) for n in ("torch", "transformers", "tokenizers")},
    }
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()


def build_family_tokenizer(family: str, out_dir: Path) -> Path:
    """Train a tiny tokenizer with ``family``'s settings and ``<think>`` tokens into ``out_dir`` (cached)."""
    settings = FAMILIES[family]

    def make(stage: Path) -> dict[str, object]:
        _train(settings).save_pretrained(str(stage))
        return {"family": family}

    spec = {"family": asdict(settings), "think_tokens": True}
    return staged_build(Path(out_dir), _spec_hash("tokenizer", spec), make)


def build_chaos_model(out_dir: Path, *, seed: int = 0) -> Path:
    """A random ``LlamaForCausalLM`` on the Llama 3 style tokenizer (with ``<think>`` tokens) that
    greedily writes :data:`CHAOS_REASONING` after ``<think>`` (cached in ``out_dir``)."""

    def make(stage: Path) -> dict[str, object]:
        tokenizer = _train(FAMILIES["llama3"])
        tokenizer.save_pretrained(str(stage))
        _chaos_weights(tokenizer, seed).save_pretrained(str(stage))
        return {"kind": "chaos", "seed": seed}

    scales = [_CHAOS_STEP, _CHAOS_LABEL_SCALE]
    spec = {"seed": seed, "arch": CHAOS_LLAMA, "reasoning": CHAOS_REASONING, "scales": scales}
    return staged_build(Path(out_dir), _spec_hash("chaos", spec), make)


def chaos_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """:data:`CHAOS_REASONING` as token ids of ``tokenizer`` (RuntimeError if a step is not one token)."""
    ids = []
    for step in CHAOS_REASONING:
        if isinstance(step, int):
            ids.append(tokenizer.convert_tokens_to_ids(_BYTE_CHARS[step]))
            continue
        encoded = tokenizer(step, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise RuntimeError(f"chaos step {step!r} is not one token: {encoded}")
        ids.append(encoded[0])
    return ids


def _chaos_weights(tokenizer: PreTrainedTokenizerBase, seed: int) -> Any:
    from transformers import LlamaConfig

    family = FAMILIES["llama3"]
    bos, eos = tokenizer.convert_tokens_to_ids(family.bos), tokenizer.convert_tokens_to_ids(family.eos)
    config = LlamaConfig(vocab_size=len(tokenizer), **CHAOS_LLAMA, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    chain = [tokenizer.convert_tokens_to_ids(THINK_TOKEN), *chaos_token_ids(tokenizer)]
    labels = [tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in (TRUE_LABEL, FALSE_LABEL)]
    return chained_model(config, chain, labels, seed=seed, step=_CHAOS_STEP, label_scale=_CHAOS_LABEL_SCALE)
