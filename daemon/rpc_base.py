"""What every group of RPCs shares: running a job for a call, turning errors into gRPC statuses.

The service is assembled from one mixin per area (core, documents, meetings, screen; see server.py). Each
mixin only converts messages and submits jobs to the scheduler; the mixins find each other's helpers
through this base class (e.g. `resolve_part` asks the documents mixin for a DocumentRef part).
"""
from __future__ import annotations

import errno
import logging
import re
import sqlite3
import time
from typing import Any, Callable, Iterator, NoReturn

import grpc

from omnid.daemon.allowed_files import AllowedFile, PermissionDenied, open_allowed
from omnid.daemon.config import DaemonConfig
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.scheduler import Job, QueueFull, Scheduler, ShuttingDown
from omnid.daemon.session import Cancelled, DecoderSession, GenerationResult, PrefillStats
from omnid.proto import omnid_pb2 as pb
from omnid.models.base import ContextOverflow, InputError, ModelInfo

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """An unknown document, meeting, cache entry or device: NOT_FOUND."""


#: What Python prints for an object without a readable form ("<_io.BytesIO object at 0x7f...>"): a heap address
#: is nobody's business, and says nothing to the client anyway.
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
#: OSErrors whose cause is known, with what to tell the client (never the daemon's own paths).
_OS_ERRORS = {
    errno.ENOSPC: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the daemon's disk is full; free some space and try again"),
    errno.EDQUOT: (grpc.StatusCode.RESOURCE_EXHAUSTED, "the daemon's user is over its disk quota"),
    errno.ELOOP: (grpc.StatusCode.INVALID_ARGUMENT, "too many levels of symbolic links (a symlink loop)"),
    errno.ENAMETOOLONG: (grpc.StatusCode.INVALID_ARGUMENT, "a path or file name is too long"),
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client sees for an exception raised while serving it."""
    if isinstance(exc, ContextOverflow):
        return grpc.StatusCode.OUT_OF_RANGE, str(exc)
    if isinstance(exc, InputError):
        code = grpc.StatusCode.FAILED_PRECONDITION if exc.unsupported else grpc.StatusCode.INVALID_ARGUMENT
        return code, str(exc)
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, "cancelled"
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return _OS_ERRORS[exc.errno]
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):  # "database or disk is full"
        return _OS_ERRORS[errno.ENOSPC]
    if isinstance(exc, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc) if exc.errno is None else "no such file"
    if isinstance(exc, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc) if exc.errno is None else "permission denied"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def clean_message(message: str) -> str:
    """A status message without heap addresses ("<_io.BytesIO object at 0x...>" becomes "the data")."""
    return _OBJECT_REPR.sub("the data", message)


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error serving a call", exc_info=exc)
    context.abort(code, clean_message(message))
    raise AssertionError("unreachable")  # context.abort raises


class DeltaBuffer:
    """Collects a job's text deltas and emits them at most once per `interval` seconds.

    The first delta goes out at once (time to first token is untouched); after that a decoder slower than
    the interval (any large model: 15-50 ms a token) still sends every token as it comes, while a faster one
    sends several tokens per message instead of waking the gRPC thread for each: on the tiny test models that
    wake-up cost 15-40% of decode speed (bench/daemon_overhead.py). Text is held back 10 ms at most.
    Call flush() before the final message.
    """

    def __init__(self, emit: Callable[[Any], None], make_event: Callable[[str], Any], interval: float = 0.010) -> None:
        self._emit, self._make_event, self._interval = emit, make_event, interval
        self._pending: list[str] = []
        self._last = 0.0

    def __call__(self, delta: str) -> None:
        self._pending.append(delta)
        now = time.perf_counter()
        if now - self._last >= self._interval:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._emit(self._make_event("".join(self._pending)))
            self._pending.clear()


def merge_deltas(events: list[Any]) -> list[Any]:
    """Join runs of text deltas (events whose `event` oneof is `delta`) into one message each."""
    merged: list[Any] = []
    for event in events:
        if (merged and _is_delta(event) and _is_delta(merged[-1]) and type(event) is type(merged[-1])):
            merged[-1] = type(event)(delta=merged[-1].delta + event.delta)
        else:
            merged.append(event)
    return merged


def _is_delta(event: Any) -> bool:
    return hasattr(event, "WhichOneof") and "event" in event.DESCRIPTOR.oneofs_by_name \
        and event.WhichOneof("event") == "delta"


def sampling_from(message: pb.Sampling) -> SamplingParams:
    """A request's Sampling message as SamplingParams (ValueError -> INVALID_ARGUMENT)."""
    return SamplingParams(temperature=message.temperature, top_p=message.top_p, top_k=message.top_k,
                          seed=message.seed, stop=tuple(message.stop))


def final_message(session: DecoderSession, stats: PrefillStats, result: GenerationResult) -> pb.Final:
    """The closing message of every generating stream: the answer and what it cost."""
    usage = pb.Usage(
        prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
        generated_tokens=result.generated_tokens, time_to_first_token_ms=result.time_to_first_token_ms,
        decode_tokens_per_second=result.decode_tokens_per_second, queue_ms=session.queue_ms,
        prefill_ms=stats.prefill_ms, total_ms=session.queue_ms + stats.prefill_ms + result.decode_ms,
        cache_restore_ms=stats.restore_ms)
    return pb.Final(text=result.text, usage=usage, stop_reason=result.stop_reason)


def stream_answer(session: DecoderSession, stats: PrefillStats, max_tokens: int, sampling: SamplingParams,
                  emit: Callable[[Any], None], event: type) -> GenerationResult:
    """The end of every generating job: stream the answer as `event(delta=...)` messages (batched by
    DeltaBuffer), then one `event(done=Final)` with the usage."""
    deltas = DeltaBuffer(emit, lambda text: event(delta=text))
    result = session.generate(max_tokens, sampling, deltas)
    deltas.flush()
    emit(event(done=final_message(session, stats, result)))
    return result


class RpcBase:
    """State and helpers shared by the RPC mixins."""

    def __init__(self, scheduler: Scheduler, config: DaemonConfig, endpoint: str) -> None:
        self.scheduler = scheduler
        self.config = config
        self.endpoint = endpoint
        self.setup()

    def setup(self) -> None:
        """Mixins that hold state (a store, a watcher) open it here: `super().setup()` first."""

    def close(self) -> None:
        """Mixins release what setup() opened here, then call `super().close()`."""

    @property
    def info(self) -> ModelInfo:
        assert self.scheduler.backend is not None
        return self.scheduler.backend.info

    def stream_job(self, job: Job, context: grpc.ServicerContext, name: str) -> Iterator[Any]:
        """Submit a job for this call and yield its events; a client that goes away cancels the job.

        Errors (from submitting or from the job) end the call with the matching status.
        """
        try:
            handle = self.scheduler.submit(job, name)
        except Exception as exc:
            abort(context, exc)
        context.add_callback(handle.cancel)
        try:
            for batch in handle.batches():
                yield from merge_deltas(batch)
        except Exception as exc:
            abort(context, exc)
        finally:
            handle.cancel()  # the generator was closed early (client gone): free the decoder now

    def unary_job(self, job: Job, context: grpc.ServicerContext, name: str) -> list[Any]:
        """Run a job for a unary call and return everything it emitted."""
        return list(self.stream_job(job, context, name))

    def call(self, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        """Run work in the handler thread (validation, decoding, SQLite), mapping its errors to statuses."""
        try:
            return fn()
        except Exception as exc:
            abort(context, exc)

    def open_readable(self, path: str) -> AllowedFile:
        """A client-named file, opened if it lies under one of the folders the daemon was allowed to read.
        Read it through the returned object only: opening the name again would undo the check
        (daemon/allowed_files.py)."""
        return open_allowed(path, self.config.allow_read)
