"""A small fault-injecting HTTP/1.1 reverse proxy on loopback, for the remote-backend tests.

It forwards requests to a real vLLM server and, when told to, answers instead with
an error status (500, 429 + Retry-After, 400, a 401 that echoes the request's
Authorization header), an HTML page with status 200, drops the connection (before or
after the server did the work), answers late or one byte at a time, rewrites the
request or the response, pads the answer, or dies mid-batch (all connections aborted,
port closed) and comes back; or it cycles through such faults, request after request.
It notices a client that hangs up while it waits. It runs its own event loop on a
daemon thread, keeps a log of what it did, is bounded (a lifetime after which it
stops by itself) and stops on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import aiohttp

FaultKind = Literal[
    "status",
    "drop",
    "drop_after",
    "delay",
    "strip_label_ids",
    "reject_label_ids",
    "mutate",
    "kill",
    "html",
    "echo_auth",
    "trickle",
    "bloat",
    "cycle",
]


@dataclass
class Fault:
    """What to do to the next ``times`` requests whose path starts with ``path``."""

    kind: FaultKind
    times: int = 1
    """How many matching requests it applies to; -1 for all of them."""
    path: str = "/v1/completions"
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    mutate: Callable[[Any], Any] | None = None
    """For "mutate": rewrites the decoded JSON response."""
    skip: int = 0
    """Matching requests that pass this fault by (to later faults) before it starts applying."""
    match: Callable[[Any], bool] | None = None
    """Only requests whose decoded JSON body this accepts (None: every request on ``path``)."""
    size: int = 0
    """For "bloat": bytes of padding added to the JSON answer."""
    steps: tuple[Fault | None, ...] = ()
    """For "cycle": what happens to each matching request in turn, round and round (None: forwarded)."""
    turn: int = 0


@dataclass
class LogEntry:
    path: str
    outcome: str
    started: float
    body: Any = field(default=None, repr=False)


class FaultProxy:
    """Forward ``http(s)://127.0.0.1:port/*`` to ``upstream``, injecting the queued faults."""

    def __init__(
        self,
        upstream: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        api_key: str | None = None,
        lifetime: float = 600.0,
        non_vllm: bool = False,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ssl_context = ssl_context
        self.api_key = api_key
        self.lifetime = lifetime
        self.non_vllm = non_vllm
        self.basic_auth = basic_auth
        self.authorizations: list[str] = []
        """The Authorization header of every request received."""
        self.port = _free_port()
        scheme = "https" if ssl_context is not None else "http"
        self.root_url = f"{scheme}://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"
        self.log: list[LogEntry] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.delayed = 0
        """Requests being held by a "delay" fault right now."""
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- control (from the test thread) ------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._astart())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._astop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def kill(self) -> None:
        """Die like a killed server: abort every connection and stop listening."""
        self._run(self._akill())

    def revive(self) -> None:
        self._run(self._listen())

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.log.clear()
            self.peak_in_flight = 0

    def outcomes(self, path: str = "/v1/completions") -> list[str]:
        with self._lock:
            return [entry.outcome for entry in self.log if entry.path.startswith(path)]

    def bodies(self, path: str = "/v1/completions") -> list[Any]:
        """The decoded JSON bodies of the requests on ``path`` (None where a body was not JSON)."""
        with self._lock:
            return [entry.body for entry in self.log if entry.path.startswith(path)]

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    # -- the proxy (on its own loop) ---------------------------------------------------

    async def _astart(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        await self._listen()
        self._watchdog = self._loop.call_later(self.lifetime, lambda: self._loop.create_task(self._astop()))

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.ssl_context, reuse_address=True
        )

    async def _akill(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _astop(self) -> None:
        await self._akill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep_open = await self._handle(*request, reader, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _next_fault(self, path: str, payload: Any) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if not path.startswith(fault.path) or fault.times == 0:
                    continue
                if fault.match is not None and not fault.match(payload):
                    continue
                if fault.skip > 0:  # let this one pass by this fault; a later fault may still apply
                    fault.skip -= 1
                    continue
                if fault.times > 0:
                    fault.times -= 1
                if fault.kind == "cycle":
                    fault.turn += 1
                    return fault.steps[(fault.turn - 1) % len(fault.steps)]
                return fault
        return None

    async def _held(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        with self._lock:
            self.delayed += 1
        try:
            return await _sleep_unless_hung_up(reader, seconds)
        finally:
            with self._lock:
                self.delayed -= 1

    def _record(self, path: str, outcome: str, started: float, body: Any = None) -> None:
        with self._lock:
            self.log.append(LogEntry(path, outcome, started, body))

    async def _handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        started = time.monotonic()
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._respond(method, path, headers, body, reader, writer, started)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _respond(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        started: float,
    ) -> bool:
        if self.non_vllm:
            self._record(path, "html", started)
            await _write(writer, 200, b"<html><body>It works!</body></html>", content_type="text/html")
            return True
        authorization = headers.get("authorization", "")
        with self._lock:
            self.authorizations.append(authorization)
        wanted = None
        if self.api_key is not None:
            wanted = f"Bearer {self.api_key}"
        elif self.basic_auth is not None:
            wanted = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
        if wanted is not None and authorization != wanted:
            self._record(path, "401", started)
            await _write(writer, 401, json.dumps({"error": "Unauthorized"}).encode())
            return True
        payload: Any = None
        if body and headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError):
                payload = json.loads(body)
        fault = self._next_fault(path, payload)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "status":
            self._record(path, f"status {fault.status}", started, payload)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            message = {"error": {"message": f"injected {fault.status}", "code": fault.status}}
            await _write(writer, fault.status, json.dumps(message).encode(), extra_headers=extra)
            return True
        if kind == "html":
            self._record(path, "html", started, payload)
            await _write(writer, 200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            return True
        if kind == "echo_auth":
            self._record(path, "401 echoing the key", started, payload)
            message = {"error": {"message": f"invalid credentials: Authorization: {authorization}"}}
            await _write(writer, 401, json.dumps(message).encode())
            return True
        if kind == "drop":
            self._record(path, "dropped", started, payload)
            writer.transport.abort()
            return False
        if kind == "kill":
            self._record(path, "killed", started, payload)
            await self._akill()
            return False
        if fault is not None and kind == "delay" and not await self._held(reader, fault.delay):
            self._record(path, "client disconnected", started, payload)
            return False
        if kind == "reject_label_ids" and isinstance(payload, dict) and "logprob_token_ids" in payload:
            self._record(path, "rejected logprob_token_ids", started, payload)
            message = {"error": {"message": "logprob_token_ids: extra inputs are not permitted", "code": 400}}
            await _write(writer, 400, json.dumps(message).encode())
            return True
        if kind == "strip_label_ids" and isinstance(payload, dict):
            payload.pop("logprob_token_ids", None)
            body = json.dumps(payload).encode()
        assert self._session is not None
        forward = {k: v for k, v in headers.items() if k in ("content-type", "accept")}
        try:
            async with self._session.request(method, self.upstream + path, data=body or None, headers=forward) as up:
                status, content = up.status, await up.read()
                content_type = up.headers.get("content-type", "application/json")
        except aiohttp.ClientError as err:
            self._record(path, f"upstream error {type(err).__name__}", started, payload)
            writer.transport.abort()
            return False
        if kind == "drop_after":
            self._record(path, "dropped after upstream", started, payload)
            writer.transport.abort()
            return False
        if fault is not None and kind == "mutate" and fault.mutate is not None and status == 200:
            content = json.dumps(fault.mutate(json.loads(content))).encode()
        if fault is not None and kind == "bloat" and status == 200:
            content = json.dumps({**json.loads(content), "padding": "x" * fault.size}).encode()
        self._record(path, kind or "ok", started, payload)
        if fault is not None and kind == "trickle":
            await _write(writer, status, content, content_type=content_type, byte_delay=fault.delay)
        else:
            await _write(writer, status, content, content_type=content_type)
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


async def _sleep_unless_hung_up(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait ``seconds``; False as soon as the client closes its connection instead."""
    try:
        await asyncio.wait_for(reader.read(1), timeout=seconds)
    except asyncio.TimeoutError:
        return True
    return False  # EOF (or a pipelined byte, which these clients never send)


async def _write(
    writer: asyncio.StreamWriter,
    status: int,
    content: bytes,
    *,
    content_type: str = "application/json",
    extra_headers: dict[str, str] | None = None,
    byte_delay: float = 0.0,
) -> None:
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Status"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(content)}",
        "Connection: keep-alive",
        *(f"{k}: {v}" for k, v in (extra_headers or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if not byte_delay:
        writer.write(head + content)
        await writer.drain()
        return
    writer.write(head)
    for offset in range(len(content)):  # a slow or hostile server: one byte at a time
        await asyncio.sleep(byte_delay)
        writer.write(content[offset : offset + 1])
        await writer.drain()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed_tls(directory: Any) -> tuple[ssl.SSLContext, str]:
    """A server SSL context for 127.0.0.1 with a fresh self-signed certificate, and the CA file path."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)
