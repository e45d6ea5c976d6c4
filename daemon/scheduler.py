"""The one owner of the model: loads it, queues jobs, runs them one at a time on the decoder.

Like Ollama's scheduler, one object owns the model's lifetime: the backend is created on the scheduler's own
worker thread and every call into it happens there (MLX and llama.cpp contexts are not thread-safe), so no two
requests can interleave tokens and a burst of first requests cannot load the model twice.

A job is a function `job(session, emit) -> result`: it uses the DecoderSession, reports typed events
(daemon/events.py) through `emit` and returns a typed result. Front ends submit jobs and read
`JobHandle.events()` / `JobHandle.result()` in their own threads. The queue is bounded
(QueueFull -> RESOURCE_EXHAUSTED); a cancelled handle stops its job at the next token or segment, and the
decoder moves on to the next job at once.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

from omnid.daemon.events import TextDelta
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DEFAULT_CHECKPOINT_INTERVAL, Cancelled, DecoderSession
from omnid.daemon.token_chain import ANCHOR, LiveSequence, TokenizerCache
from omnid.models.base import Backend, ChatFrame, InputError, TextSegment

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
#: A job: `job(session, emit) -> result`. It emits typed events (daemon/events.py) and returns a typed result.
Job = Callable[[DecoderSession, Emit], Any]
T = TypeVar("T")


#: Words the warm-up evaluates to measure how snapshots grow per token.
_STATE_PROBE_TOKENS = 48


def checkpoint_interval(base_bytes: int, bytes_per_token: float, n_ctx: int, ram_budget: int) -> int:
    """Tokens between checkpoints, so that one prompt filling the whole context checkpoints into at most a
    quarter of the RAM budget (the rest serves other prompts): the smallest multiple of ANCHOR from 512 up.

    A prompt of L tokens with checkpoints every I tokens holds about L/I * base + bytes_per_token * L^2 / (2I).
    """
    full = n_ctx * base_bytes + bytes_per_token * n_ctx * n_ctx / 2
    share = max(1, ram_budget // 4)
    interval = max(512, int(full / share) + 1)
    return -(-interval // ANCHOR) * ANCHOR


class QueueFull(Exception):
    """Too many requests are waiting for the decoder."""


class ShuttingDown(Exception):
    """The daemon is stopping and takes no more work."""


_END = object()
#: Text deltas are passed on at most this often (seconds); see JobHandle.emit.
DELTA_INTERVAL = 0.010


class JobHandle(Generic[T]):
    """A submitted job as its submitter sees it: its events, its result, its cancellation, its timing.

    This is the one place text deltas are coalesced, in two steps. On the decoder thread, `emit` passes the
    first delta on at once (time to first token is untouched) and after that at most once per DELTA_INTERVAL:
    a decoder slower than that (any large model: 15-50 ms a token) still sends every token as it comes, while
    a faster one does not wake the submitter's thread for each token (on the tiny test models that wake-up
    cost 15-40% of decode speed, bench/daemon_overhead.py). On the submitter's side, `events` joins the
    deltas that were waiting into one, so a front end sends one message for them.
    """

    def __init__(self, job: Job, name: str, delta_interval: float = DELTA_INTERVAL) -> None:
        self.job = job
        self.name = name
        self.enqueued_at = time.perf_counter()
        self.started_at: float | None = None
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._interval = delta_interval
        self._held: list[str] = []
        self._last_delta = -delta_interval

    @property
    def queue_ms(self) -> float:
        end = self.started_at if self.started_at is not None else time.perf_counter()
        return (end - self.enqueued_at) * 1000

    def cancel(self) -> None:
        self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- the decoder's side ----------------------------------------------------------------------------------

    def emit(self, event: Any) -> None:
        """Pass an event on (text deltas held back a little: see the class docstring)."""
        if isinstance(event, TextDelta):
            self._held.append(event.text)
            now = time.perf_counter()
            if now - self._last_delta < self._interval:
                return
            self._last_delta = now
            self._release_held()
            return
        self._release_held()
        self._events.put(event)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """The job is over: its result, or the error its submitter gets."""
        self._release_held()
        self._result, self._error = result, error
        self._finished.set()
        self._events.put(_END)

    def _release_held(self) -> None:
        if self._held:
            self._events.put(TextDelta("".join(self._held)))
            self._held.clear()

    # -- the submitter's side --------------------------------------------------------------------------------

    def events(self) -> Iterator[Any]:
        """Events as the job emits them, deltas that were waiting joined into one; re-raises the job's error
        after the last event."""
        while True:
            batch = [self._events.get()]
            while batch[-1] is not _END and not self._events.empty():
                batch.append(self._events.get_nowait())
            done = batch[-1] is _END
            if done:
                batch.pop()
            yield from _joined(batch)
            if done:
                break
        if self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> T:
        """Wait for the job and return what it returned (re-raising its error); events are left unread.

        TimeoutError when it has not finished within `timeout` seconds."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"job {self.name} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def done(self) -> bool:
        return self._finished.is_set()


def _joined(events: list[Any]) -> list[Any]:
    """Runs of TextDelta joined into one delta each; every other event as it was, in order."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


class Scheduler:
    """Owns the backend on one worker thread and runs queued jobs in order."""

    def __init__(self, load_backend: Callable[[], Backend], make_cache: Callable[[Backend], PromptCache],
                 max_queue: int = 16) -> None:
        self._load_backend = load_backend
        self._make_cache = make_cache
        self.max_queue = max_queue
        self._queue: queue.Queue[JobHandle | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="omnid-decoder", daemon=True)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        #: Guards _stopping together with enqueueing, so no job can land behind stop()'s sentinel.
        self._lock = threading.Lock()
        self._stopping = False
        self._current: JobHandle | None = None
        self.backend: Backend | None = None
        self.cache: PromptCache | None = None
        self._frame: ChatFrame | None = None
        #: What the backend's sequence holds between jobs (see DecoderSession: cut back instead of restoring).
        self._live = LiveSequence()
        self._tokens = TokenizerCache()
        #: Tokens between checkpoints on decoders that cannot be cut back (sized at start-up, see _warm_up).
        self.checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL
        #: Snapshot bytes of an empty sequence (recurrent state, logits) and per token (attention KV).
        self.state_base_bytes = 0
        self.state_bytes_per_token = 0.0

    # -- lifetime --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model on the worker thread; raises what loading raised."""
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new work, cancel queued and running jobs, free the model."""
        with self._lock:  # a submit under way finishes enqueueing first, and is drained below
            self._stopping = True
        self._finish_left()
        current = self._current
        if current is not None:
            current.cancel()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # -- work ------------------------------------------------------------------------------------------------

    def submit(self, job: Job, name: str = "job") -> JobHandle:
        handle: JobHandle = JobHandle(job, name)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the daemon is shutting down")
            try:
                self._queue.put_nowait(handle)
            except queue.Full:
                raise QueueFull(f"{self.max_queue} requests are already waiting for the decoder; "
                                "try again later") from None
        return handle

    def submit_work(self, work: Callable[[DecoderSession], T], name: str = "work") -> JobHandle[T]:
        """Work that needs the decoder and returns a result, nothing more (a pipeline's DecoderQueue, see
        modalities/decoder.py)."""
        return self.submit(lambda session, emit: work(session), name)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def _run(self) -> None:
        try:
            self.backend = self._load_backend()
            self.cache = self._make_cache(self.backend)
            self._frame = self.backend.chat_frame()  # rendered once: every job lays prompts out with it
            self._warm_up()
        except BaseException as exc:  # reported by start(); the thread ends
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        try:
            while True:
                handle = self._queue.get()
                if handle is None:
                    break
                self._run_one(handle)
            self._finish_left()
        finally:
            self.cache.close()  # queued disk snapshots land before the process ends
            self.backend.close()

    def _finish_left(self) -> None:
        """Everything still queued ends with ShuttingDown (at stop, and after the sentinel): no submitter may
        wait forever."""
        while True:
            try:
                handle = self._queue.get_nowait()
            except queue.Empty:
                return
            if handle is not None:
                handle.finish(error=ShuttingDown("the daemon is shutting down"))

    def _warm_up(self) -> None:
        """Run one tiny request through the whole job path (layout, prefill, sampling, one-token decodes), so
        the first client does not pay for one-time set-up: llama.cpp's compute graphs and buffers, MLX's
        kernels, first calls into the sampler (measured here: 0.8 s for llama.cpp's first decode on the tiny
        model). A private cache with no budget keeps this out of the shared cache and its statistics."""
        assert self.backend is not None and self._frame is not None and self.cache is not None
        scratch = PromptCache(self.backend.info.fingerprint, ram_budget_bytes=0)
        session = DecoderSession(self.backend, scratch, lambda: False, frame=self._frame, tokens=self._tokens)
        session.prefill(session.build_prompt([TextSegment("Hello")]), save=False)
        session.generate(2, SamplingParams())
        small = (self.backend.n_tokens, self.backend.snapshot().nbytes)
        self.backend.append_tokens(self.backend.tokenize(TextSegment(" hello" * _STATE_PROBE_TOKENS)))
        large = (self.backend.n_tokens, self.backend.snapshot().nbytes)
        self.backend.reset()
        self.state_bytes_per_token = max(0.0, (large[1] - small[1]) / max(1, large[0] - small[0]))
        self.state_base_bytes = max(0, int(small[1] - small[0] * self.state_bytes_per_token))
        self.checkpoint_interval = checkpoint_interval(self.state_base_bytes, self.state_bytes_per_token,
                                                       self.backend.info.context_length, self.cache.ram_budget_bytes)

    def _run_one(self, handle: JobHandle) -> None:
        assert self.backend is not None and self.cache is not None
        if handle.is_cancelled():
            handle.finish(error=Cancelled())
            return
        if self._stopping:  # taken from the queue just as stop() began: it would run past the cancellation
            handle.finish(error=ShuttingDown("the daemon is shutting down"))
            return
        self._current = handle
        handle.started_at = time.perf_counter()
        session = DecoderSession(self.backend, self.cache, handle.is_cancelled, queue_ms=handle.queue_ms,
                                 frame=self._frame, live=self._live, tokens=self._tokens,
                                 checkpoint_interval=self.checkpoint_interval)
        error: BaseException | None = None
        result: Any = None
        try:
            result = handle.job(session, handle.emit)
        except Cancelled as exc:
            error = ShuttingDown("the daemon is shutting down") if self._stopping else exc
        except Exception as exc:  # the daemon never dies from one job; the submitter gets the error
            if not isinstance(exc, InputError):
                log.exception("job %s failed", handle.name)
            error = exc
        finally:
            if error is not None:
                self.backend.reset()  # a failed or cancelled job may leave a half-evaluated sequence
                self._live.clear()
            self._current = None
            handle.finish(result, error)
