"""A private event loop on a daemon thread: where a backend's network I/O runs for every caller.

Synchronous callers wait on it from their own threads; asynchronous callers await it
from their own event loops (``asyncio.wrap_future``). So there is one set of HTTP
connection pools whatever the number of threads or ``asyncio.run`` calls, one bound
on requests in flight, and one code path that waits on the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from rank1_integrations.errors import BackendError

__all__ = ["BackgroundLoop"]

T = TypeVar("T")

_SHUTDOWN_SECONDS = 10.0


class BackgroundLoop:
    """An event loop running on its own daemon thread until :meth:`close`."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for it; an interrupted wait cancels it."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking call was made from the backend's own event loop thread")
        future = self.submit(coroutine)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise self._closed_error() from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the work too
            raise

    async def arun(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` run on the loop; cancelling the caller cancels it there."""
        try:
            return await asyncio.wrap_future(self.submit(coroutine))
        except asyncio.CancelledError:
            if self._closed:
                raise self._closed_error() from None
            raise

    def close(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Cancel what still runs, await ``cleanup`` on the loop, then stop the loop and its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True

        async def shutdown() -> None:
            running = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if cleanup is not None:
                await cleanup()

        if threading.current_thread() is not self._thread:
            # If the loop is stuck, give up waiting: its daemon thread dies with the process.
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=_SHUTDOWN_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_SHUTDOWN_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()
        else:  # closed from a callback on the loop itself: nothing may block here
            self._loop.call_soon(self._loop.stop)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the loop; cancelling the future cancels it."""
        with self._lock:
            if self._closed:
                coroutine.close()
                raise self._closed_error()
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    @staticmethod
    def _closed_error() -> BackendError:
        return BackendError("the backend is closed (close() was called): make a new one")
