"""A scheduler job followed from the HTTP server's event loop, and cancelled when its client goes away.

The event loop must never block on JobHandle's queue. The handle tells the loop (call_soon_threadsafe, from
the decoder thread) whenever it queues events, and the loop takes them without waiting (JobHandle.notify_on,
take): one wake-up of the loop per batch of deltas (JobHandle coalesces them), no thread waiting per request,
and no thread pool of a fixed size that a queue of waiting requests could exhaust.

A client that disconnects cancels the job: the decoder stops at the next token (or media segment) and moves
on, as for gRPC (rpc_base.stream_job).
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, TypeVar

from starlette.requests import Request

from omnid.daemon.scheduler import JobHandle

T = TypeVar("T")


class FollowedJob:
    """Events and result of a submitted job, as an async iterator and an awaitable."""

    def __init__(self, handle: JobHandle) -> None:
        self.handle = handle
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._result: Any = None
        handle.notify_on(self._wake)

    def _wake(self) -> None:
        """On the decoder thread: events are queued."""
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: the server stopped, nobody is waiting
            self.handle.cancel()

    async def events(self) -> AsyncIterator[Any]:
        """The job's events; `result` holds what it returned once this ends. Raises the job's error."""
        while True:
            await self._ready.wait()
            self._ready.clear()  # before taking: events queued after this wake it again
            batch, over = self.handle.take()
            for event in batch:
                yield event
            if over:
                self._result = self.handle.result()
                return

    @property
    def result(self) -> Any:
        return self._result

    async def finished(self) -> Any:
        """Wait for the job (skipping its events) and return its result."""
        async for _ in self.events():
            pass
        return self._result

    def cancel(self) -> None:
        self.handle.cancel()

async def until_disconnected(request: Request) -> None:
    """Returns once the client has gone away (or the response was sent: then nobody waits for this)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Cancellable(Protocol):
    def cancel(self) -> None: ...


async def unless_gone(request: Request, awaitable: Awaitable[T], work: Cancellable) -> T:
    """What `awaitable` gives; a client that disconnects first cancels `work` (ClientGone)."""
    waiting = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():  # the client left (or the server is stopping): free the decoder now
            work.cancel()
            waiting.cancel()
    if waiting not in done:
        raise ClientGone()
    return waiting.result()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a thread of its own, awaited (blocking work: decoding media, a transcription's clip jobs).
    Not the loop's default executor: a few long transcriptions must not hold every worker of a small pool."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            _settle(loop, future, None, exc)
        else:
            _settle(loop, future, result, None)
    threading.Thread(target=run, name="omnid-http-work", daemon=True).start()
    return await future


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # cancelled: nobody waits
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed
        pass


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""
