"""rank1-serve under test: the app on a free loopback port, in a thread of the test process or as a
real ``rank1 serve`` process (``python -m rank1_integrations serve``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from tests.vllm_server import free_port

_REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-key-for-rank1-serve"
REPORTING_LAUNCHER = (
    "import signal, sys\n"
    "heavy = lambda: sorted(m for m in ('torch', 'vllm') if m in sys.modules)\n"
    "# uvicorn re-raises the SIGTERM it handled once it has shut down: report, then exit 0\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(print('heavy modules at exit:', heavy(), flush=True)))\n"
    "from rank1_integrations.cli import main\n"
    "sys.exit(main(['serve', *sys.argv[1:]]))\n"
)
"""``rank1 serve`` that says, when SIGTERM has stopped it, whether vLLM or torch were ever imported."""


class InProcessServer:
    """``uvicorn.Server`` on 127.0.0.1 in a daemon thread (no signal handlers: not the main thread)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"rank1-serve-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process rank1-serve did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ServeProcess:
    """``python -m rank1_integrations serve ARGS --port P`` from this checkout (or ``python -c launcher``),
    output to a log file."""

    def __init__(
        self, args: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None, launcher: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        # this checkout's package; an API key only where a test gives one
        full_env = {k: v for k, v in os.environ.items() if k != "RANK1_SERVE_API_KEY"}
        full_env.update(env or {}, PYTHONPATH=str(_REPO))
        start = ["-c", launcher] if launcher else ["-m", "rank1_integrations", "serve"]
        self.process = subprocess.Popen(
            [sys.executable, *start, *args, "--port", str(self.port)],
            cwd=_REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 300) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"rank1-serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rank1-serve not healthy after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def terminate(self) -> None:
        """SIGTERM, as a process manager sends it."""
        self.process.send_signal(signal.SIGTERM)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._log.close()
