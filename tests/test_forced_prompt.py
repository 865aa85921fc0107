"""The forced-answer prompt from what the model generated, on real tokenizers of every rank1 family.

No engine: the generated ids are built here, and their text is what vLLM's detokenizer
makes of them (tokenizers' ``DecodeStream`` primed with the prompt, as vLLM runs it: it
never emits a trailing half character). The expected ids come from ``tests/reference.py``,
which shares no code with the package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from rank1_integrations.backends.base import Completion
from rank1_integrations.core.judging import JudgingRun
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PromptBuilder, _think_text_ids, control_spans
from rank1_integrations.core.tokenization import HFPromptTokenizer
from rank1_integrations.errors import ModelOutputError
from tests import reference
from tests.models.families import CHAOS_REASONING, chaos_token_ids

QUERY = "what does the len function return"
PASSAGE = "Return the length (the number of items) of an object."

# (family, <think> a token of its own): every family's real tokenizer (<think> is text), and tiny
# imitations with <think> tokens.
TOKENIZERS = [("qwen2.5", True), ("qwen2.5", False), ("llama3", False), ("llama3", True), ("mistral", False)]


def engine_text(hf_tokenizer, prompt_ids: Sequence[int], generated: Sequence[int]) -> str:
    """What vLLM's fast detokenizer gives for ``generated`` after ``prompt_ids`` (a final EOS stops it unseen)."""
    from tokenizers.decoders import DecodeStream

    if generated and generated[-1] == hf_tokenizer.eos_token_id:
        generated = generated[:-1]
    stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=False)
    return "".join(stream.step(hf_tokenizer.backend_tokenizer, token) or "" for token in generated)


def spell(hf_tokenizer, *parts: str | int) -> list[int]:
    """Generated ids: a str is ordinary text (special-token strings in it stay characters), an int one token."""
    ids: list[int] = []
    for part in parts:
        if isinstance(part, int):
            ids.append(part)
        else:
            ids += hf_tokenizer(part, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


class Setup:
    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.folder = folder
        self.hf = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer = HFPromptTokenizer(self.hf)
        self.builder = PromptBuilder(self.tokenizer, template=None, max_prompt_tokens=900)
        self.controls = self.hf.get_added_vocab()

    def forced(self, passage: str, generated: list[int], builder: PromptBuilder | None = None):
        builder = builder or self.builder
        prompt = builder.build(QUERY, passage)
        text = engine_text(self.hf, prompt.token_ids, generated)
        return prompt, text, builder.build_forced(prompt, generated, text)

    def expected(self, prompt, generated: list[int], text: str, reasoning: str) -> list[int]:
        return reference.expected_forced_ids(self.folder, prompt.text, generated, text, reasoning)


@pytest.fixture(scope="module", params=TOKENIZERS, ids=[f"{f}{'-think' if t else ''}" for f, t in TOKENIZERS])
def setup(request, family_tokenizer_dir, real_model_dir) -> Setup:
    family, think_tokens = request.param
    return Setup(family_tokenizer_dir(family) if think_tokens else real_model_dir(family))


def generations(setup: Setup) -> dict[str, list[int]]:
    """Reasoning a model may write: plain, with control tokens, quoting special-token strings, cut characters."""
    hf, controls = setup.hf, setup.controls
    eos = controls[hf.eos_token]
    other = next(i for t, i in controls.items() if t not in (hf.eos_token, hf.bos_token))
    end_think = controls.get("</think>", other)
    start = controls.get(hf.bos_token or "", controls.get("<think>", other))
    return {
        "plain": spell(hf, " The passage is about len. It answers the query. And then"),
        "controls": spell(hf, " It is", end_think, " about len.", other, " So", start, " true. More", eos),
        "quoted": spell(hf, " It quotes <think> and </think> true.", end_think, " Then </s> <|eot_id|>. x"),
        "cut character": spell(hf, " 日本語 is text. 🙂 is an emoji")[:-2],
        "blank start": spell(hf, "\n\n  The answer.", eos),
    }


@pytest.mark.parametrize("kind", ["plain", "controls", "quoted", "cut character", "blank start"])
def test_forced_ids_keep_what_the_model_generated(setup: Setup, kind: str) -> None:
    generated = generations(setup)[kind]
    prompt, text, forced = setup.forced(PASSAGE, generated)
    assert forced.reasoning == reference.trimmed(text)
    assert list(forced.token_ids) == setup.expected(prompt, generated, text, forced.reasoning)


def test_control_tokens_the_model_generated_stay_control_tokens(setup: Setup) -> None:
    _, _, forced = setup.forced(PASSAGE, generations(setup)["quoted"])
    ids, controls = forced.token_ids, setup.controls
    if "</think>" in controls:
        # Generated once as a token (once more as characters), and the protocol's own at the end.
        assert ids.count(controls["</think>"]) == 2
        assert ids[-1] == controls["</think>"]
    if "<think>" in controls:
        assert ids.count(controls["<think>"]) == 1  # the prompt's: the quoted one stays characters
    for written in ("</s>", "<|eot_id|>"):
        if written in controls:
            assert controls[written] not in ids


def test_forced_prompts_reencode_only_from_think(setup: Setup) -> None:
    """Prompt ids are reused up to <think> (a token) or its text (where the tokenizer splits there)."""
    think_is_token = "<think>" in setup.controls
    if not think_is_token:
        assert _think_text_ids(setup.tokenizer) is not None  # every family splits before "<think>"
    for passage in (PASSAGE, "ends with spaces  ", "ends with a newline\n", "日本語", "42", "x\n\n"):
        generated = generations(setup)["controls"]
        prompt, text, forced = setup.forced(passage, generated)
        assert list(forced.token_ids) == setup.expected(prompt, generated, text, forced.reasoning), passage
        reused = len(prompt.token_ids) - (0 if think_is_token else len(_think_text_ids(setup.tokenizer) or ()))
        assert forced.token_ids[:reused] == prompt.token_ids[:reused]


def test_a_tokenizer_that_merges_across_think_reencodes_the_last_segment(model_cache: Path) -> None:
    """A byte-level BPE without a pre-tokenizer merges "\\n<" : the prompt's tail is then re-encoded whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["Passage: words\n<think>\nThe answer is true false\n</think>"] * 50, trainer=trainer)
    folder = model_cache / "tokenizer-no-pretokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>").save_pretrained(str(folder))
    merging = Setup(folder)
    assert _think_text_ids(merging.tokenizer) is None
    generated = spell(merging.hf, " The answer is words.", merging.controls["<|eos|>"])
    prompt, text, forced = merging.forced("words", generated)
    assert list(forced.token_ids) == merging.expected(prompt, generated, text, forced.reasoning)


# -- the bound -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chaos(chaos_model_dir: Path) -> Setup:
    return Setup(chaos_model_dir)


def reranker_builder(chaos: Setup, context: int, budget: int) -> PromptBuilder:
    """The builder a reranker with this context and budget uses."""
    return PromptBuilder(chaos.tokenizer, template=None, max_prompt_tokens=context - budget, context_size=context)


def test_reasoning_full_of_control_tokens_fits_at_a_near_maximum_prompt(chaos: Setup) -> None:
    """The issue's case: 100 generated tokens, most of them control tokens, at a near-maximum prompt."""
    context, budget = 400, 100
    builder = reranker_builder(chaos, context, budget)
    controls = [i for t, i in chaos.controls.items() if t != chaos.hf.eos_token]
    generated = [*[controls[i % len(controls)] for i in range(90)], *spell(chaos.hf, " It is not relevant. So")]
    generated = generated[:budget]
    prompt, text, forced = chaos.forced("word " * 500, generated, builder)
    assert prompt.truncated
    assert len(prompt.token_ids) >= builder.max_prompt_tokens - 2
    assert forced.reasoning == reference.trimmed(text)  # nothing had to be cut
    assert list(forced.token_ids) == chaos.expected(prompt, generated, text, forced.reasoning)
    assert len(forced.token_ids) + 1 <= context  # with its answer token
    # The reasoning as data (special-token strings as characters) would not have fit.
    as_data = len(
        reference.tokenizer(chaos.folder)(f"{prompt.text}\n{forced.reasoning}", split_special_tokens=True)["input_ids"]
    )
    assert as_data > context


def test_reasoning_that_re_tokenizes_past_the_context_is_cut_to_fit(chaos: Setup) -> None:
    """Lone bytes decode to U+FFFD, three bytes each: the longest prefix that fits is kept, trimmed."""
    context, budget = 300, 70
    builder = reranker_builder(chaos, context, budget)
    generated = (chaos_token_ids(chaos.hf)[:-1] * 3)[:budget]  # no EOS: cut by the budget
    prompt, text, forced = chaos.forced("word " * 500, generated, builder)
    whole = chaos.expected(prompt, generated, text, reference.trimmed(text))
    assert len(whole) >= context  # the case under test: the authors' prompt would not fit
    assert len(forced.token_ids) + 1 <= context
    assert reference.trimmed(text).startswith(forced.reasoning)
    assert forced.reasoning == reference.trimmed(forced.reasoning)  # cut back to a sentence end
    assert forced.reasoning
    assert list(forced.token_ids) == chaos.expected(prompt, generated, text, forced.reasoning)


def test_a_forced_prompt_that_cannot_fit_fails_only_its_passage(chaos: Setup) -> None:
    budget = 1  # a prompt that fills the context but one token: no room for "\n\n</think>"
    builder = reranker_builder(chaos, len(chaos.builder.build(QUERY, "a").token_ids) + budget, budget)
    prompts = [builder.build(QUERY, p) for p in ("a", "b")]
    assert not any(prompt.truncated for prompt in prompts)
    run = JudgingRun(builder, positions=[(0, 0), (0, 1)], label_token_ids=(11, 12), max_reasoning_tokens=budget)
    assert all(run.begin(index, prompt) is not None for index, prompt in enumerate(prompts))
    answered = Completion((11,), "", "stop", "</think> true", (-0.1, -2.0))
    assert run.take(0, Completion((), "", "length", None, None)) is None  # no forced request: it cannot fit
    assert run.take(1, answered) is None
    failed, judged = run.outcomes()
    assert isinstance(failed, ModelOutputError)
    assert "do not fit" in str(failed)
    assert isinstance(judged, Judgment)
    assert judged.judged


# -- which characters were control tokens ------------------------------------------------------


def test_spans_mark_control_tokens_not_the_same_strings_written_as_characters(chaos: Setup) -> None:
    generated = chaos_token_ids(chaos.hf)
    text = engine_text(chaos.hf, chaos.builder.build(QUERY, PASSAGE).token_ids, generated)
    spans = control_spans(chaos.tokenizer, generated, text)
    marked = [text[start:end] for start, end in spans]
    expected = [s for s in CHAOS_REASONING if isinstance(s, str) and s in chaos.controls and s != chaos.hf.eos_token]
    assert marked == expected  # the EOS ends the text; the quoted " <think>" is not marked
    assert " <think>" in text
    assert text.index(" <think>") + 1 not in [start for start, _ in spans]


class DecodeCounter(HFPromptTokenizer):
    decodes = 0

    def decode(self, token_ids):
        type(self).decodes += 1
        return super().decode(token_ids)


def test_text_without_special_token_strings_costs_no_decoding(chaos: Setup) -> None:
    counter = DecodeCounter(chaos.hf)
    generated = spell(chaos.hf, " Plain reasoning, no markers.", chaos.controls[chaos.hf.eos_token])
    assert control_spans(counter, generated, " Plain reasoning, no markers.") == []
    assert DecodeCounter.decodes == 0


def test_ids_that_do_not_account_for_the_text_leave_it_all_data(chaos: Setup, caplog) -> None:
    generated = spell(chaos.hf, " a", chaos.controls["</think>"])
    with caplog.at_level(logging.WARNING, logger="rank1_integrations"):
        assert control_spans(chaos.tokenizer, generated, " a<think>") == []
    assert "do not account" in caplog.text
