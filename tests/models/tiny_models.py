"""Tiny offline rank1-style models for tests, benchmarks and the cookbook.

No model hub is reachable where this project is tested, so test models are built
locally in seconds: a byte-level BPE tokenizer (Qwen2-style, with ``<think>`` and
``</think>`` as special tokens and single-token ``" true"``/``" false"`` labels) and a
tiny ``Qwen2ForCausalLM`` that vLLM can serve on CPU (head_dim 32). The scripted model
is trained until greedy decoding reproduces a fixed script exactly, so tests can assert
exact reasoning text, stop reasons and scores on both the natural and forced-answer
paths. Heavy libraries are imported inside functions so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tests.models.building import staged_build, train_byte_level_bpe

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

BUILDER_VERSION = "2"  # bump when the builders change what they produce
EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN = "<|endoftext|>", "<think>", "</think>"
TRUE_LABEL, FALSE_LABEL = " true", " false"
VOCAB_SIZE = 2000
#: Architecture: head_dim 32 (vLLM's CPU attention needs head_dim in {32, 64, ...}), float32.
TINY_QWEN2: dict[str, int | bool | str] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "dtype": "float32",
}
#: Trained probability of the written label right after ``</think>`` (soft target, so
#: both labels sit in the top logprobs and scores are not saturated at 0/1).
LABEL_CONFIDENCE = 0.9
#: Trained probability of ``forced_label`` after ``prompt + "\n" + trimmed + "\n</think>"``.
FORCED_CONFIDENCE = 0.8
RANK1_PROMPT_PREFIX = (
    "Determine if the following passage is relevant to the query. "
    "Answer only with 'true' or 'false'.\nQuery: {query}\nPassage: {passage}\n"
)
# Qwen2's pre-tokenizer split, so the tiny tokenizer segments text like rank1's.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SENTENCE_ENDS = ".!?"
# Training stops when every forced token leads the runner-up by _HARD_MARGIN nats, each
# label position leads by _SOFT_MARGIN and its label probabilities are within
# _SOFT_TOLERANCE of the targets.
_HARD_MARGIN, _SOFT_MARGIN, _SOFT_TOLERANCE = 2.0, 0.3, 0.03


@dataclass(frozen=True)
class ScriptedJudgment:
    r"""One judgment the scripted model must reproduce under greedy decoding.

    ``completion`` is generated right after ``<think>``; when it never closes
    ``</think>`` it ends in EOS, and ``forced_label`` (if set) is what the model answers
    when the reasoning is trimmed to any sentence end and ``"\\n</think>"`` appended.
    """

    query: str
    passage: str
    completion: str
    forced_label: Literal["true", "false"] | None = None


def rank1_prompt(query: str, passage: str) -> str:
    """Format the full rank1 prompt text, ending in ``<think>``."""
    return RANK1_PROMPT_PREFIX.format(query=query, passage=passage) + THINK_TOKEN


LEN_QUERY = "what does the len function return"
JOIN_QUERY = "how do I join strings with a separator"
LEN_PASSAGE = "Return the length (the number of items) of an object. The argument may be a sequence or a collection."
SORTED_PASSAGE = "The sorted function returns a new sorted list from the items in an iterable."
OPEN_PASSAGE = "Open file and return a corresponding file object. If the file cannot be opened, an OSError is raised."
JOIN_PASSAGE = (
    "Return a string which is the concatenation of the strings in iterable. "
    "The separator between elements is the string providing this method."
)
#: Long unclosed reasoning (about 90 tokens) for the forced-answer path.
OPEN_REASONING = (
    "The query asks what the len function returns. The passage describes the open "
    "function instead. It explains how a file is opened and which error is raised when "
    "that fails. Nothing in it mentions the length of an object or the number of items. "
    "A file object is not a count of items, and an error is not a length. "
    "The passage talks about files and errors, so it does not answer the query. The "
    "answer would come from the documentation of len, which is not shown here."
)
DEFAULT_SCRIPT: tuple[ScriptedJudgment, ...] = (
    ScriptedJudgment(
        LEN_QUERY,
        LEN_PASSAGE,
        "The passage says len returns the number of items in an object, which answers the query.</think> true",
    ),
    ScriptedJudgment(
        LEN_QUERY, SORTED_PASSAGE, "The passage is about sorting, not about the length of an object.</think> false"
    ),
    ScriptedJudgment(LEN_QUERY, OPEN_PASSAGE, OPEN_REASONING, forced_label="false"),
    ScriptedJudgment(
        JOIN_QUERY, JOIN_PASSAGE, "The passage describes str.join, which joins strings with a separator.</think> true"
    ),
    ScriptedJudgment(JOIN_QUERY, LEN_PASSAGE, "The passage is about len, not about joining strings.</think> false"),
)


def _corpus() -> Iterator[str]:
    """Tokenizer training text: prompt words, the default script, labels, stdlib English.

    Custom scripts are left out on purpose: every build shares one tokenizer (same
    label ids), and byte-level BPE encodes any text anyway.
    """
    import importlib

    special = (EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN)
    for item in DEFAULT_SCRIPT:
        text = rank1_prompt(item.query, item.passage) + item.completion
        for tok in special:
            text = text.replace(tok, "\n")
        yield from [text] * 20
    for _ in range(300):  # enough occurrences that " true"/" false" become merges
        yield "The answer is true. The answer is false. Relevant: true false true false\n"
    names = "builtins os os.path json re string textwrap collections itertools functools pathlib shutil argparse"
    objects: list[object] = [getattr(str, method) for method in sorted(dir(str))]
    for name in names.split():
        module = importlib.import_module(name)
        objects += [module, *(getattr(module, attr, None) for attr in sorted(dir(module)))]
    for obj in objects:  # docstrings are absent under -OO; the rest still suffices
        doc = getattr(obj, "__doc__", None)
        yield doc if isinstance(doc, str) else ""


def _train_tokenizer() -> PreTrainedTokenizerBase:
    """Train the Qwen2-style byte-level BPE and check the labels are single tokens."""
    # NFC like Qwen2; transformers' Qwen2Tokenizer (which AutoTokenizer picks for a
    # folder whose config.json says qwen2) would add it anyway.
    specials = [EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN]
    return train_byte_level_bpe(
        _corpus(), _QWEN2_SPLIT, vocab_size=VOCAB_SIZE, nfc=True, eos=EOS_TOKEN, specials=specials
    )


def build_tokenizer(out_dir: Path) -> Path:
    """Train the tiny Qwen2-style tokenizer and ``save_pretrained`` it into ``out_dir``."""
    out_dir = Path(out_dir)
    _train_tokenizer().save_pretrained(str(out_dir))
    return out_dir


def _spec_hash(kind: str, seed: int, script: Sequence[ScriptedJudgment]) -> str:
    """Everything the built files depend on; a change forces a rebuild."""
    spec = {
        "builder_version": BUILDER_VERSION,
        "kind": kind,
        "seed": seed,
        "script": [asdict(item) for item in script],
        "python": list(sys.version_info[:2]),  # stdlib docstrings feed the tokenizer
        "libs": {n: version(n) for n in ("torch", "transformers", "tokenizers")},
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _build(out_dir: Path, kind: str, seed: int, script: Sequence[ScriptedJudgment]) -> Path:
    def make(stage: Path) -> dict[str, object]:
        tokenizer = _train_tokenizer()
        tokenizer.save_pretrained(str(stage))
        model, steps = _make_model(tokenizer, seed, script if kind == "scripted" else None)
        model.save_pretrained(str(stage))
        return {"kind": kind, "seed": seed, "train_steps": steps}

    return staged_build(Path(out_dir), _spec_hash(kind, seed, script), make)


def build_random_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Untrained model with the same architecture and tokenizer, for plumbing tests."""
    return _build(Path(out_dir), "random", seed, DEFAULT_SCRIPT)


def build_scripted_model(out_dir: Path, script: Sequence[ScriptedJudgment] = DEFAULT_SCRIPT, *, seed: int = 0) -> Path:
    """Model trained so greedy decoding of each prompt reproduces its completion + EOS.

    Cached: returns ``out_dir`` untouched when its marker matches this exact spec.
    Raises ValueError for a script with two entries on one (query, passage), and
    RuntimeError when training does not reach an exact reproduction.
    """
    script = tuple(script)
    if len({(item.query, item.passage) for item in script}) != len(script):
        msg = "script has two completions for the same (query, passage); greedy decoding can give only one"
        raise ValueError(msg)
    return _build(Path(out_dir), "scripted", seed, script)


def _make_model(
    tokenizer: PreTrainedTokenizerBase, seed: int, script: Sequence[ScriptedJudgment] | None
) -> tuple[Qwen2ForCausalLM, int]:
    """Create the tiny Qwen2 model, trained on ``script`` if given; also return steps."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    special_ids = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    config = Qwen2Config(vocab_size=len(tokenizer), **TINY_QWEN2, **special_ids)
    # fork_rng keeps the caller's global RNG untouched; deterministic algorithms and one
    # thread make the same seed give the same weights (thread count changes reduction
    # order). One thread is also 10x faster than two on a busy 2-core machine: these
    # matrices are too small to share, and contended OpenMP barriers spin.
    with torch.random.fork_rng(devices=[]):
        was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
        torch.use_deterministic_algorithms(mode=True)
        torch.set_num_threads(1)
        try:
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config).to(torch.float32)
            steps = _train(model, tokenizer, script) if script is not None else 0
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)
    # Only token ids: vLLM turns generation_config fields into default sampling params.
    model.generation_config = GenerationConfig(**special_ids)
    return model.eval(), steps


# (token ids, {position: {next token id: target probability}})
_Example = tuple[list[int], dict[int, dict[int, float]]]


def _examples(
    tok: PreTrainedTokenizerBase, script: Sequence[ScriptedJudgment]
) -> tuple[list[_Example], list[tuple[list[int], list[int]]]]:
    """Training examples, plus (prompt ids, expected greedy ids) pairs to verify."""
    eos, think = tok.convert_tokens_to_ids(EOS_TOKEN), tok.convert_tokens_to_ids(THINK_TOKEN)
    label_ids = {lab: tok.convert_tokens_to_ids(tok.tokenize(" " + lab)[0]) for lab in ("true", "false")}

    def soft(label: str, confidence: float) -> dict[int, float]:
        other = "false" if label == "true" else "true"
        return {label_ids[label]: confidence, label_ids[other]: 1.0 - confidence}

    examples, expected = [], []
    for item in script:
        prompt = tok(RANK1_PROMPT_PREFIX.format(query=item.query, passage=item.passage))["input_ids"] + [think]
        completion = tok(item.completion)["input_ids"] + [eos]
        ids = prompt + completion
        targets = {len(prompt) - 1 + i: {t: 1.0} for i, t in enumerate(completion)}
        for label in ("true", "false"):
            if item.completion.endswith(END_THINK_TOKEN + " " + label):
                targets[len(ids) - 3] = soft(label, LABEL_CONFIDENCE)
        examples.append((ids, targets))
        expected.append((prompt, completion))
        if item.forced_label is not None and END_THINK_TOKEN not in item.completion:
            reasoning = item.completion.strip()
            for cut in (i + 1 for i, ch in enumerate(reasoning) if ch in _SENTENCE_ENDS):
                text = rank1_prompt(item.query, item.passage) + "\n" + reasoning[:cut]
                forced = tok(text + "\n" + END_THINK_TOKEN)["input_ids"]
                examples.append((forced, {len(forced) - 1: soft(item.forced_label, FORCED_CONFIDENCE)}))
    return examples, expected


def _train(
    model: Qwen2ForCausalLM, tok: PreTrainedTokenizerBase, script: Sequence[ScriptedJudgment], max_steps: int = 3000
) -> int:
    """Train full-batch AdamW until every target holds with a margin; return the steps.

    Teacher-forced checks are read off each step's own logits (no extra forward); when
    they pass, real greedy decoding verifies. The logit margin keeps vLLM's slightly
    different float32 kernels on the same argmax.
    """
    import torch

    examples, expected = _examples(tok, script)
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    width = max(len(ids) for ids, _ in examples)
    batch = torch.tensor([ids + [eos] * (width - len(ids)) for ids, _ in examples])
    rows, cols, dense = [], [], []
    for b, (_, targets) in enumerate(examples):
        for pos, target in sorted(targets.items()):
            rows.append(b)
            cols.append(pos)
            dist = [0.0] * len(tok)
            for tid, p in target.items():
                dist[tid] = p
            dense.append(dist)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    target = torch.tensor(dense)
    best = target.argmax(-1)
    soft = target.max(-1).values < 1.0
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    step, failure = 0, "not trained"
    while step < max_steps:
        hidden = model.model(input_ids=batch).last_hidden_state[rows_t, cols_t]
        logprobs = torch.log_softmax(model.lm_head(hidden), dim=-1)
        with torch.no_grad():
            others = logprobs.scatter(1, best[:, None], float("-inf")).max(-1).values
            margin = logprobs.gather(1, best[:, None])[:, 0] - others
            soft_err = (logprobs.exp() - target).abs().max(-1).values[soft]
            if (
                bool((margin[~soft] > _HARD_MARGIN).all())
                and bool((margin[soft] > _SOFT_MARGIN).all())
                and bool((soft_err < _SOFT_TOLERANCE).all())
            ):
                failure = _verify_greedy(model, expected)
                if not failure:
                    return step
                model.train()
        loss = -(target * logprobs).sum(-1).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        step += 1
    msg = f"scripted model not reproduced after {max_steps} steps: {failure}"
    raise RuntimeError(msg)


def _verify_greedy(model: Qwen2ForCausalLM, expected: Sequence[tuple[list[int], list[int]]]) -> str:
    """Greedy-decode each prompt with transformers (float32); '' when all match."""
    import torch

    model.eval()
    with torch.no_grad():
        for prompt, completion in expected:
            out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=len(completion) + 2)
            got = out[0, len(prompt) :].tolist()
            if got[: len(completion)] != completion:
                return f"prompt {prompt[-8:]}...: expected {completion}, got {got}"
    return ""
