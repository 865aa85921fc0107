"""A :class:`PromptTokenizer` over a vLLM server's ``/tokenize`` and ``/detokenize``, cached.

``/tokenize`` always parses special-token strings, so to keep them out of data the tokenizer must know
them: from ``/tokenizer_info``, else by probing the special tokens of rank1's base model families.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from rank1_integrations.backends.remote.core import HttpCall, RemoteCore
from rank1_integrations.core.protocol import (
    FALSE_LABEL,
    PROMPT_HEAD,
    PROMPT_MIDDLE,
    PROMPT_TAIL,
    THINK_CLOSE,
    THINK_OPEN,
    TRUE_LABEL,
)
from rank1_integrations.core.tokenization import (
    Control,
    Data,
    HFPromptTokenizer,
    PromptPiece,
    PromptTokenizer,
    Trusted,
    encode_prompt,
    leading_special_ids,
    protected_pattern,
    split_protected,
)
from rank1_integrations.errors import IncompatibleServerError, InvalidInputError, ServerStatusError

__all__ = ["KNOWN_SPECIAL_TOKENS", "RemoteTokenizer", "disagreement", "local_or_server"]

logger = logging.getLogger("rank1_integrations.backends.remote.backend")

KNOWN_SPECIAL_TOKENS: tuple[str, ...] = (
    # rank1's markers; Qwen2 / Qwen2.5; Llama 3 / 3.1 (and its reserved tokens below); Mistral
    *"""<think> </think>
    <|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|>
    <|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|>
    <tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> <|file_sep|>
    <|begin_of_text|> <|end_of_text|> <|start_header_id|> <|end_header_id|> <|eot_id|> <|eom_id|> <|python_tag|>
    <|finetune_right_pad_id|>
    <s> </s> <unk> <pad> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS]
    [TOOL_CALLS] [TOOL_CONTENT] [SYSTEM_PROMPT] [/SYSTEM_PROMPT] [PREFIX] [MIDDLE] [SUFFIX] [IMG] [IMG_BREAK] [IMG_END]
    """.split(),  # noqa: SIM905 (a table of names reads best as text)
    *(f"<|reserved_special_token_{i}|>" for i in range(256)),
)
"""Special tokens probed for when the server does not serve ``/tokenizer_info``."""

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _LRU(Generic[_K, _V]):
    """A thread-safe LRU cache, bounded by the total size of its entries."""

    def __init__(self, max_size: int, size_of: Callable[[_K, _V], int]) -> None:
        self._max_size, self._size_of, self._size = max_size, size_of, 0
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: _K, value: _V) -> None:
        size = self._size_of(key, value)
        if size > self._max_size:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= self._size_of(key, old)
            self._items[key] = value
            self._size += size
            while self._size > self._max_size:
                evicted_key, evicted = self._items.popitem(last=False)
                self._size -= self._size_of(evicted_key, evicted)


_ID_BYTES = sys.getsizeof(2**20)  # each id in a tuple is an int object of its own (only ids <= 256 are shared)


def _bytes(*parts: str | tuple[int, ...]) -> int:
    return sum(sys.getsizeof(part) + (_ID_BYTES * len(part) if isinstance(part, tuple) else 0) for part in parts)


class RemoteTokenizer:
    """The server's tokenizer, one cached HTTP call per new text."""

    parallelism = 8  # prompts a reranker may build at once with it (each costs round trips; they overlap)

    def __init__(
        self, core: RemoteCore, call: Callable[[HttpCall], Any], *, extra_protected: Sequence[str] = ()
    ) -> None:
        self._core, self._call = core, call
        half = core.settings.tokenizer_cache_bytes // 2
        self._encoded: _LRU[tuple[str, bool], tuple[int, ...]] = _LRU(
            half, lambda key, ids: sys.getsizeof(key) + _bytes(key[0], ids)
        )
        self._decoded: _LRU[tuple[int, ...], str] = _LRU(half, _bytes)
        self.model = core.model
        self._added = self._added_vocabulary(extra_protected)
        self.control_tokens: Mapping[int, str] = {token_id: text for text, token_id in self._added.items()}
        self.protected_strings: Sequence[str] = tuple(sorted({*self._added, *(s for s in extra_protected if s)}))
        self.leading_ids: Sequence[int] = leading_special_ids(
            self._tokenize("a", add_special_tokens=True), self._tokenize("a", add_special_tokens=False)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, protected={len(self.protected_strings)} strings)"

    def encode_plain(self, text: str) -> list[int]:
        """No special tokens added and none parsed (the server parses them: a protected string goes
        one character at a time, as :func:`encode_prompt` does for data)."""
        ids: list[int] = []
        for part, is_protected in split_protected(text, protected_pattern(self.protected_strings)) if text else ():
            for piece in part if is_protected else (part,):
                ids.extend(self._tokenize(piece, add_special_tokens=False))
        return ids

    def single_token_id(self, text: str) -> int | None:
        if text in self._added:
            return self._added[text]
        ids = self._tokenize(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def decode(self, token_ids: Sequence[int]) -> str:
        key = tuple(int(t) for t in token_ids)
        text = self._decoded.get(key) if key else ""
        if text is None:
            body = self._call(self._core.meta_call("detokenize", tokens=list(key)))
            text = str(body["prompt"])  # checked by the core
            self._decoded.put(key, text)
        return text

    def _tokenize(self, text: str, *, add_special_tokens: bool) -> tuple[int, ...]:
        key = (text, add_special_tokens)
        ids = self._encoded.get(key)
        if ids is None:
            ids = tuple(self._call_tokenize(text, add_special_tokens)["tokens"])  # checked by the core
            self._encoded.put(key, ids)
        return ids

    def _call_tokenize(self, text: str, specials: bool, token_strs: bool = False) -> Any:
        body: dict[str, Any] = {"prompt": text, "add_special_tokens": specials, "return_token_strs": token_strs}
        return self._call(self._core.meta_call("tokenize", **body))

    def _added_vocabulary(self, extra: Sequence[str]) -> dict[str, int]:
        try:
            info = self._call(self._core.meta_call("tokenizer_info"))
        except ServerStatusError as err:
            if err.status not in (404, 405, 501):
                raise
            info = None
        if isinstance(info, dict) and isinstance(info.get("added_tokens_decoder"), dict):
            added: dict[str, int] = {}
            for key, value in info["added_tokens_decoder"].items():
                content = value.get("content") if isinstance(value, dict) else value
                if isinstance(content, str) and content and str(key).isdigit():
                    added[content] = int(key)
            # Special tokens named in the config but not listed as added still get protected.
            extra = [*extra, *(v for k, v in info.items() if k.endswith("_token") and isinstance(v, str))]
            for key in ("additional_special_tokens", "extra_special_tokens"):
                values = info.get(key)
                values = list(values.values()) if isinstance(values, dict) else values
                extra += [v for v in values if isinstance(v, str)] if isinstance(values, list | tuple) else []
            missing = [s for s in dict.fromkeys(extra) if s and s not in added]
            added.update(self._probe(missing))
            return added
        logger.info(
            "the server has no /tokenizer_info (start vLLM with --enable-tokenizer-info-endpoint to protect "
            "its exact added vocabulary); probing %d known special tokens instead",
            len(KNOWN_SPECIAL_TOKENS),
        )
        return self._probe(list(dict.fromkeys((*KNOWN_SPECIAL_TOKENS, *extra))))

    def _probe(self, candidates: Sequence[str]) -> dict[str, int]:
        """Which candidates the server's tokenizer reads as one token of their own."""
        wanted = [c for c in candidates if c and "\n" not in c]
        if not wanted:
            return {}
        body = self._call_tokenize("\n".join(wanted), False, token_strs=True)
        ids, strings = body["tokens"], body.get("token_strs")  # a dict: checked by the core
        if not isinstance(strings, list) or len(strings) != len(ids):
            raise IncompatibleServerError("the server's /tokenize ignored return_token_strs: is it vLLM?")
        wanted_set = set(wanted)
        return {s: i for i, s in zip(ids, strings, strict=True) if isinstance(s, str) and s in wanted_set}


# Prompts on which a local tokenizer must agree with the server's before it is trusted: the
# protocol's own strings, spaces and newlines, non-ASCII, special-token strings inside data.
_AGREEMENT_PROBES: tuple[tuple[PromptPiece, ...], ...] = (
    (
        Trusted(PROMPT_HEAD),
        Data("what does café mean?"),
        Trusted(PROMPT_MIDDLE),
        Data(f"Two  spaces,\ttabs\n\nand lines. a {THINK_OPEN} b {THINK_CLOSE}{TRUE_LABEL} <|endoftext|> <s> [INST]"),
        Trusted(PROMPT_TAIL),
        Control(THINK_OPEN),
    ),
    (Trusted("\n"), Data("Ünïcödé — 日本語 🙂 ½ ﬁ 1234567 3.14159 -42 0x1F."), Trusted("\n"), Control(THINK_CLOSE)),
    (Data(TRUE_LABEL),),
    (Data(FALSE_LABEL),),
    (Data("  leading and trailing  \n"),),
)


def disagreement(local: PromptTokenizer, server: PromptTokenizer) -> str | None:
    """Why ``local`` cannot stand in for the server's tokenizer; None when they agree on every probe."""
    if list(local.leading_ids) != list(server.leading_ids):
        return "they put different ids before a prompt"
    missing = sorted(set(server.protected_strings) - set(local.protected_strings))
    if missing:
        return f"the server's tokenizer has special tokens the local one lacks: {missing[:5]}"
    for marker in (THINK_OPEN, THINK_CLOSE, TRUE_LABEL, FALSE_LABEL):
        if local.single_token_id(marker) != server.single_token_id(marker):
            return f"they give {marker!r} different ids"
    for pieces in _AGREEMENT_PROBES:
        ids = encode_prompt(local, pieces)
        if ids != encode_prompt(server, pieces):
            return f"they encode the prompt {ids[:8]}... differently"
        if local.decode(ids) != server.decode(ids):
            return "they decode a prompt differently"
    return None


def local_or_server(
    choice: PromptTokenizer | str | None, server: RemoteTokenizer, *, extra_protected: Sequence[str] = ()
) -> PromptTokenizer:
    """A local tokenizer only when it agrees with the server's; one named or given that disagrees is refused."""
    if choice == "server":
        return server
    local = choice if not isinstance(choice, str | None) else _load(choice or server.model, extra_protected)
    why = "no local copy could be loaded" if local is None else disagreement(local, server)
    if local is None or why is not None:
        if choice is not None:
            raise InvalidInputError(f"the tokenizer {choice!r} cannot stand in for the server's: {why}")
        logger.info("prompts are built with the server's tokenizer (one /tokenize call per new text): %s", why)
        return server
    logger.info("prompts are built with a local copy of the server's tokenizer (checked against the server's)")
    return local


def _load(name: str, extra_protected: Sequence[str]) -> PromptTokenizer | None:
    try:
        transformers = importlib.import_module("transformers")  # absent from the light install
        # The fast tokenizer class itself, not AutoTokenizer: that reads the model's config
        # and imports torch, which a client of remote servers (a gateway) need not load.
        loaded = transformers.PreTrainedTokenizerFast.from_pretrained(name, local_files_only=True)
    except Exception as err:  # transformers raises many kinds for "not here": any means no local copy
        logger.debug("no local tokenizer for %r: %s: %s", name, type(err).__name__, err)
        return None
    return HFPromptTokenizer(loaded, extra_protected=extra_protected)
