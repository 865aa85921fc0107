"""Shared by the test-model builders: cached staged builds, and byte-level BPE tokenizers."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["MARKER_FILE", "chained_model", "staged_build", "train_byte_level_bpe"]

MARKER_FILE = "rank1_tiny_model.json"
_LABELS = (" true", " false")


def _cached(out_dir: Path, spec_hash: str) -> bool:
    try:
        marker = json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    files = marker.get("files", [])
    return marker.get("spec_hash") == spec_hash and bool(files) and all((out_dir / name).is_file() for name in files)


def staged_build(out_dir: Path, spec_hash: str, make: Callable[[Path], dict[str, object]]) -> Path:
    """Build into a staging folder with ``make`` (it returns marker fields), then move the files in.

    A no-op when ``out_dir``'s marker matches ``spec_hash``. Files are replaced one by one
    (atomic rename), the marker last, so concurrent builders (e.g. pytest-xdist workers)
    never see a half-written file, and a crashed build never leaves a marker that matches.
    """
    out_dir = Path(out_dir)
    if _cached(out_dir, spec_hash):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fields = make(stage)
        (out_dir / MARKER_FILE).unlink(missing_ok=True)
        files = sorted(p.name for p in stage.iterdir())
        for name in files:
            (stage / name).chmod(0o644)  # mkdtemp/safetensors leave owner-only modes
            (stage / name).replace(out_dir / name)
        marker = {"spec_hash": spec_hash, **fields, "files": files}
        (stage / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        (stage / MARKER_FILE).replace(out_dir / MARKER_FILE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir


def train_byte_level_bpe(
    corpus: Iterable[str],
    split_pattern: str,
    *,
    vocab_size: int,
    nfc: bool,
    eos: str,
    specials: Sequence[str],
    bos: str | None = None,
    hf_settings: dict[str, object] | None = None,
) -> PreTrainedTokenizerBase:
    """A byte-level BPE trained on ``corpus`` with a regex pre-tokenizer; ``bos`` is put before
    every text by a post-processor. Raises RuntimeError unless the labels are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=eos,
        **({"bos_token": bos} if bos is not None else {}),
        extra_special_tokens=[t for t in specials if t not in (eos, bos)],
        model_max_length=2048,
        **(hf_settings or {}),
    )
    for label in _LABELS:
        ids = hf(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            msg = f"label {label!r} is not a single token: {ids}"
            raise RuntimeError(msg)
    return hf


def chained_model(
    config: Any, chain: Sequence[int], labels: Sequence[int], *, seed: int, step: float, label_scale: float
) -> Any:
    """A random causal LM (untied) whose greedy decoding after ``chain[i]`` writes ``chain[i + 1]``.

    Two random layers leave the last hidden state close to the current token's embedding,
    so adding that embedding (scaled to about unit norm, times ``step`` nats) to the next
    token's output row makes greedy decoding follow the chain with a wide margin (vLLM's
    float32 kernels agree); the label rows are scaled so scores spread over (0, 1).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
        with torch.no_grad():
            embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
            # A constant, not each embedding's own norm: elementwise arithmetic only, so the
            # weights are the same bits on any CPU (reductions are not).
            scale = step / (config.initializer_range * config.hidden_size**0.5)
            for current, following in itertools.pairwise(chain):
                head[following] += scale * embeddings[current]
            head[list(labels)] *= label_scale
    ids = {f"{name}_token_id": getattr(config, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    model.generation_config = GenerationConfig(**ids)
    return model.eval()
