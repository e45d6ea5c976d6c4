"""How many calls of each kind may hold one of the server's threads at once, so some are always left over.

grpc's sync server runs every call, health checks included, on one pool of threads, and a streaming call keeps
its thread until it ends: 32 idle WatchScreen streams used to take every thread, and health, Status and
Generate then timed out. The choice here (over one cap for every stream, or a second server) is a cap per kind
of call that can hold a thread for long without a scheduler queue slot, refused at once with
RESOURCE_EXHAUSTED and the limit, and a pool sized from the caps:

  * followers (WatchScreen, RecordMeeting): open for as long as the client likes, waiting on no queue;
  * long calls (Transcribe, IngestDocument): minutes of reading, cutting and parsing in the handler thread
    between decoder jobs, and a transcription waits for a queue slot rather than fail half-way;
  * decoder calls (Generate, AskDocument, ...) need no cap of their own: past the queue's --max-queue they are
    refused by the scheduler, so at most max_queue + 1 of them wait on the decoder;
  * everything else (Status, lists, health, reflection) is quick.

`pool_size` is the sum of those bounds plus QUICK_CALLS threads that only quick calls can be sure of: however
the capped kinds are used, a health check or a Status finds a free thread. A cap per kind (not one for all
streams) keeps a tab full of screen watchers from refusing a transcription, and the other way round.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc

_SERVICE = "/omnid.v1.Omni/"
#: Threads left for quick calls (health, Status, lists, controls) whatever the capped kinds hold.
QUICK_CALLS = 8
#: Transcriptions and document ingests at once: one decoder serves them in turn, so more buys nothing.
LONG_CALLS = 4


@dataclass(frozen=True)
class Kind:
    """A kind of call with a cap: its name in messages, its methods, and how many may run at once."""

    name: str
    methods: tuple[str, ...]
    limit: int
    advice: str


def kinds(max_streams: int) -> tuple[Kind, ...]:
    return (Kind("long-lived streams (WatchScreen, RecordMeeting)", ("WatchScreen", "RecordMeeting"), max_streams,
                 "close one, or start omnid with a larger --max-streams"),
            Kind("transcriptions and document ingests", ("Transcribe", "IngestDocument"), LONG_CALLS,
                 "they run one after the other anyway: wait for one to finish"))


def pool_size(max_queue: int, max_streams: int) -> int:
    """Threads for the server: the running job and the queue, every capped kind at its cap, and QUICK_CALLS."""
    return max_queue + 1 + sum(k.limit for k in kinds(max_streams)) + QUICK_CALLS


class CallLimits(grpc.ServerInterceptor):
    """Refuses a call of a capped kind with RESOURCE_EXHAUSTED when its kind is at its limit; the slot is held
    from the call's first step until its handler returns (a stream: until it ends or the client goes away)."""

    def __init__(self, max_streams: int) -> None:
        self._slots: dict[str, tuple[Kind, threading.BoundedSemaphore]] = {}
        for kind in kinds(max_streams):
            semaphore = threading.BoundedSemaphore(kind.limit)
            for method in kind.methods:
                self._slots[_SERVICE + method] = (kind, semaphore)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        found = self._slots.get(handler_call_details.method)
        if handler is None or found is None or handler.request_streaming:
            return handler
        kind, semaphore = found
        if handler.response_streaming:
            stream = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                _admit(kind, semaphore, context)
                try:
                    yield from stream(request, context)
                finally:
                    semaphore.release()
            return handler._replace(unary_stream=unary_stream)
        unary = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            _admit(kind, semaphore, context)
            try:
                return unary(request, context)
            finally:
                semaphore.release()
        return handler._replace(unary_unary=unary_unary)


def _admit(kind: Kind, semaphore: threading.BoundedSemaphore, context: grpc.ServicerContext) -> None:
    if not semaphore.acquire(blocking=False):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"{kind.limit} {kind.name} are running, the most this daemon takes at once; {kind.advice}")
