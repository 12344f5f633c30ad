"""One open MCP client session per server and process, so a call costs a round trip, not a server start.

A stdio server is a child process: starting one per call (a Python server imports the SDK first) cost
seconds per call. Each server gets a task on a private event-loop thread that enters `mcp.Client` and
serves calls from a queue; the SDK's task groups are entered and left by that same task, as anyio
requires. A process forked after sessions opened (a run worker from the warm launcher's forkserver)
does not share them: the pid is checked and a child starts its own. A failed session is dropped and
the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import mcp

Call = Callable[[mcp.Client], Awaitable[Any]]


class McpSessions:
    """Open clients by server key, each owned by one serving task on this object's loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[tuple[Call, asyncio.Future[Any]] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="mcp-sessions", daemon=True).start()
                self._queues, self._tasks, self._pid = {}, set(), os.getpid()
            return self._loop

    def run(self, key: str, target: Any, read_timeout_s: float, call: Call, timeout_s: float) -> Any:
        """Run `call(client)` on the server's open session (opened on first use); bounded by `timeout_s`."""
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._submit(key, target, read_timeout_s, call), loop)
        return future.result(timeout_s)

    async def _submit(self, key: str, target: Any, read_timeout_s: float, call: Call) -> Any:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(self._serve(key, target, read_timeout_s, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await queue.put((call, result))
        return await result

    async def _serve(
        self, key: str, target: Any, read_timeout_s: float, queue: asyncio.Queue[tuple[Call, Any] | None]
    ) -> None:
        pending: tuple[Call, asyncio.Future[Any]] | None = None
        try:
            async with mcp.Client(target, read_timeout_seconds=read_timeout_s) as client:
                while (pending := await queue.get()) is not None:
                    call, result = pending
                    try:
                        result.set_result(await call(client))
                    except Exception as exc:  # the tool's failure; the session itself may still be fine
                        result.set_exception(exc)
                        raise
                    pending = None
        except Exception as exc:
            # Drop the session: this call and any queued behind it fail, the next call reconnects.
            if self._queues.get(key) is queue:
                del self._queues[key]
            for waiting in [pending, *_drain(queue)]:
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_exception(exc)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every session and wait for it (stdio servers exit); also run at interpreter exit."""
        loop = self._loop
        if loop is None or self._pid != os.getpid():
            return

        async def shut() -> None:
            for queue in self._queues.values():
                queue.put_nowait(None)
            self._queues = {}
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=timeout_s)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout_s + 1)


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


SESSIONS = McpSessions()
atexit.register(SESSIONS.close)
