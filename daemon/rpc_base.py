"""What every group of RPCs shares: running a job for a call, turning errors into gRPC statuses.

The service is assembled from one mixin per area (core, documents, meetings, screen; see server.py). Each
mixin only converts messages and submits jobs to the scheduler (jobs emit and return the plain types of
daemon/events.py; this layer alone turns them into protobufs); the mixins find each other's helpers
through this base class (e.g. `resolve_part` asks the documents mixin for a DocumentRef part).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Generator, Iterator, NoReturn

import grpc

from omnid.daemon import inputs
from omnid.daemon.allowed_files import AllowedFile, open_allowed
from omnid.daemon.config import DaemonConfig
from omnid.daemon.errors import Failure, classify
from omnid.daemon.events import Done, PagesUsed, PrefillProgress, Progress, TextDelta, Usage, Waiting
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.scheduler import Job, JobHandle, Scheduler
from omnid.proto import omnid_pb2 as pb
from omnid.models.base import InputError, ModelInfo

log = logging.getLogger(__name__)

#: A streaming call whose job waits in the queue is told so after this many seconds, and again as often.
WAITING_NOTICE_SECONDS = 1.0


#: The gRPC status of each kind of failure (daemon/errors.py says which exception is which kind).
_STATUS = {
    Failure.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Failure.UNSUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    Failure.TOO_LONG: grpc.StatusCode.OUT_OF_RANGE,
    Failure.OVER_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Failure.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Failure.NO_SPACE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Failure.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Failure.CANCELLED: grpc.StatusCode.CANCELLED,
    Failure.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Failure.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Failure.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client sees for an exception raised while serving it."""
    kind, message = classify(exc)
    return _STATUS[kind], message


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error serving a call", exc_info=exc)
    context.abort(code, message)
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

    def answer_limits(self, max_tokens: int, sampling: SamplingParams) -> tuple[int, SamplingParams]:
        """A request's max_tokens and sampling with the defaults filled in (see inputs.answer_limits)."""
        return inputs.answer_limits(self.info, self.scheduler.frame, self.config.default_max_tokens, max_tokens,
                                    sampling)

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
        return Waiting(ahead + len(running), handle.queue_ms / 1000)

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
            handle = self.scheduler.submit(job, name, client_of(context))
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


#: gRPC metadata a client may send to say who it is (its apps' requests then share one per-client cap).
CLIENT_METADATA = "omnid-client"


def client_of(context: grpc.ServicerContext) -> str:
    """Who sent a call, for the scheduler's per-client cap: the `omnid-client` metadata if given, else the peer
    (on a Unix socket every peer looks alike, so clients that want their own share name themselves)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA and isinstance(value, str) and value:
            return "named:" + value[:200]
    return "peer:" + (context.peer() or "")
