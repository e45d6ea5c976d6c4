"""What every group of RPCs shares: running a job for a call, turning errors into gRPC statuses.

The service is assembled from one mixin per area (core, documents, meetings, screen; see server.py). Each
mixin only converts messages and submits jobs to the scheduler (jobs emit and return the plain types of
daemon/events.py; this layer alone turns them into protobufs); the mixins find each other's helpers
through this base class (e.g. `resolve_part` asks the documents mixin for a DocumentRef part).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import re
import sqlite3
from typing import Any, Callable, Generator, Iterator, NoReturn

import grpc

from omnid.daemon.allowed_files import AllowedFile, PermissionDenied, open_allowed
from omnid.daemon.config import DaemonConfig
from omnid.daemon.events import Done, PagesUsed, PrefillProgress, Progress, TextDelta, Usage, Waiting
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.scheduler import Job, JobHandle, QueueFull, Scheduler, ShuttingDown
from omnid.daemon.session import Cancelled
from omnid.modalities.pdf_isolated import ReaderStopped
from omnid.proto import omnid_pb2 as pb
from omnid.models.base import (ContextOverflow, EngineUnavailable, InputError, ModelInfo, ModelLoadError,
                              OverLimit)

log = logging.getLogger(__name__)

#: A streaming call whose job waits in the queue is told so after this many seconds, and again as often.
WAITING_NOTICE_SECONDS = 1.0
#: A base model (no chat template) continues text and has no end of turn to stop at: unless asked otherwise it
#: gets this many tokens and stops at the end of a paragraph (gemma-3-270m otherwise repeated one line ~40
#: times until the 512-token default).
BASE_MODEL_MAX_TOKENS = 128
PARAGRAPH_END = "\n\n"


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
    if isinstance(exc, OverLimit):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, InputError):
        code = grpc.StatusCode.FAILED_PRECONDITION if exc.unsupported else grpc.StatusCode.INVALID_ARGUMENT
        return code, str(exc)
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, (ShuttingDown, ReaderStopped, EngineUnavailable)):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, Cancelled):
        return grpc.StatusCode.CANCELLED, "cancelled"
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, ModelLoadError):  # loading again after an unload failed (the files went away?)
        return grpc.StatusCode.UNAVAILABLE, f"the model could not be loaded: {exc}"
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


@dataclasses.dataclass(frozen=True)
class Deletion:
    """A DeleteRequest, checked: exactly one of ids, a time range [since, until) (0 = open end), or everything."""

    ids: tuple[str, ...] = ()
    since: float = 0.0
    until: float = 0.0
    everything: bool = False

    @classmethod
    def of(cls, request: pb.DeleteRequest) -> "Deletion":
        ids = tuple(i.strip() for i in request.ids if i.strip())
        ranged = bool(request.since_unix or request.until_unix)
        if sum((bool(ids), ranged, request.all)) != 1:
            raise InputError("say what to delete: ids, a time range (since/until), or all - exactly one of them")
        if ranged and request.until_unix and request.since_unix >= request.until_unix:
            raise InputError("the time range is empty: since must come before until")
        return cls(ids, request.since_unix, request.until_unix, request.all)


def sampling_from(message: pb.Sampling) -> SamplingParams:
    """A request's Sampling message as SamplingParams (ValueError -> INVALID_ARGUMENT)."""
    return SamplingParams(temperature=message.temperature, top_p=message.top_p, top_k=message.top_k,
                          seed=message.seed, stop=tuple(message.stop))


def usage_message(usage: Usage) -> pb.Usage:
    return pb.Usage(**dataclasses.asdict(usage))


def final_message(done: Done) -> pb.Final:
    """The closing message of every generating stream: the answer and what it cost."""
    return pb.Final(text=done.text, usage=usage_message(done.usage), stop_reason=done.stop_reason)


def progress_message(progress: PrefillProgress | Progress | Waiting) -> pb.Progress:
    """A job's progress as the wire's Progress: a prefill's tokens, a stage of pages, or its wait in the queue
    (stage "waiting": `done` jobs ahead of it)."""
    if isinstance(progress, Waiting):
        return pb.Progress(stage="waiting", done=progress.ahead, unit="jobs ahead",
                           elapsed_seconds=progress.waited_s)
    if isinstance(progress, PrefillProgress):
        return pb.Progress(stage="prefilling", done=progress.done, total=progress.total, unit="tokens",
                           per_second=progress.tokens_per_second, eta_seconds=progress.eta_seconds,
                           elapsed_seconds=progress.elapsed_s, cached=progress.cached)
    return pb.Progress(stage=progress.stage, done=progress.done, total=progress.total, unit="pages")


def answer_message(event_type: type) -> Callable[[Any], Any]:
    """The converter from an answering job's events (TextDelta, PagesUsed, PrefillProgress, Done) to
    `event_type` messages (pb.GenerateEvent, pb.AskDocumentEvent: the same oneof names)."""
    def convert(event: Any) -> Any:
        if isinstance(event, TextDelta):
            return event_type(delta=event.text)
        if isinstance(event, (PrefillProgress, Waiting)):
            return event_type(progress=progress_message(event))
        if isinstance(event, Done):
            return event_type(done=final_message(event))
        if isinstance(event, PagesUsed):
            return event_type(pages=pb.PagesUsed(pages=list(event.pages), reason=event.reason))
        raise TypeError(f"no {event_type.__name__} for {type(event).__name__}")
    return convert


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
        info = self.scheduler.info
        assert info is not None
        return info

    @property
    def is_base_model(self) -> bool:
        """The model has no chat template (a base model that continues text; see models/chat_frame.py)."""
        frame = self.scheduler.frame
        return frame is not None and not (frame.user_open or frame.user_close)

    def answer_limits(self, max_tokens: int, sampling: SamplingParams) -> tuple[int, SamplingParams]:
        """A request's max_tokens (0 = the default) and sampling, with the defaults filled in; a max_tokens
        beyond the whole context is refused rather than silently cut short. A base model's default is
        BASE_MODEL_MAX_TOKENS and, unless the request has stop strings, a stop at the end of a paragraph."""
        context = self.info.context_length
        if max_tokens > context:
            raise InputError(f"max_tokens {max_tokens} is more than the model's whole context ({context} tokens)")
        if max_tokens:
            return max_tokens, sampling
        if self.is_base_model:  # both defaults together: a client that names a length gets that length
            if not sampling.stop:
                sampling = dataclasses.replace(sampling, stop=(PARAGRAPH_END,))
            return BASE_MODEL_MAX_TOKENS, sampling
        return self.config.default_max_tokens, sampling

    def stream_job(self, job: Job, context: grpc.ServicerContext, name: str,
                   message: Callable[[Any], Any], tell_waiting: bool = False) -> Generator[Any, None, Any]:
        """Submit a job for this call and yield its events as messages; returns the job's result (use it as
        `result = yield from self.stream_job(...)`). A client that goes away cancels the job. With
        `tell_waiting`, a job still in the queue after WAITING_NOTICE_SECONDS sends Waiting (as often).

        Errors (from submitting or from the job) end the call with the matching status.
        """
        with self.submitted(job, context, name) as handle:
            for event in handle.events(WAITING_NOTICE_SECONDS if tell_waiting else None):
                if event is None:
                    if handle.started_at is None:
                        yield message(self._waiting(handle))
                    continue
                yield message(event)
            return handle.result()

    def answer_stream(self, job: Job, context: grpc.ServicerContext, name: str, event_type: type) -> Iterator[Any]:
        """Stream an answering job (one that returns Done) as `event_type` messages, the final one last."""
        message = answer_message(event_type)
        done = yield from self.stream_job(job, context, name, message, tell_waiting=True)
        yield message(done)

    def _waiting(self, handle: JobHandle) -> Waiting:
        running, waiting = self.scheduler.jobs()
        ahead = waiting.index(handle) if handle in waiting else len(waiting)
        return Waiting(ahead + (running is not None), handle.queue_ms / 1000)

    def unary_job(self, job: Job, context: grpc.ServicerContext, name: str) -> Any:
        """Run a job for a unary call and return its result."""
        with self.submitted(job, context, name) as handle:
            return handle.result()

    @contextlib.contextmanager
    def submitted(self, job: Job, context: grpc.ServicerContext, name: str) -> Iterator[JobHandle]:
        """The job, submitted for this call: errors from submitting or from the job end the call with the
        matching status, and the job is cancelled when the client goes away or the caller leaves early (a
        streaming generator closed by gRPC), so the decoder is freed at once."""
        try:
            handle = self.scheduler.submit(job, name)
        except Exception as exc:
            abort(context, exc)
        context.add_callback(handle.cancel)
        try:
            yield handle
        except Exception as exc:
            abort(context, exc)
        finally:
            handle.cancel()

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
