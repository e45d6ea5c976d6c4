"""The one owner of the model: loads it, queues jobs, runs them one at a time on the decoder.

Like Ollama's scheduler, one object owns the model's lifetime: the backend is created on the scheduler's own
worker thread and every call into it happens there (MLX and llama.cpp contexts are not thread-safe), so no two
requests can interleave tokens and a burst of first requests cannot load the model twice.

A job is a function `job(session, emit)`: it uses the DecoderSession and reports events through `emit`.
gRPC handlers submit jobs and iterate `JobHandle.events()` in their own threads. The queue is bounded
(QueueFull -> RESOURCE_EXHAUSTED); a cancelled handle stops its job at the next token or segment, and the
decoder moves on to the next job at once.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator

from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DEFAULT_CHECKPOINT_INTERVAL, Cancelled, DecoderSession
from omnid.daemon.token_chain import ANCHOR, LiveSequence, TokenizerCache
from omnid.models.base import Backend, ChatFrame, InputError, TextSegment

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
Job = Callable[[DecoderSession, Emit], None]


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


class JobHandle:
    """A submitted job as its submitter sees it: its events, its cancellation, its timing."""

    def __init__(self, job: Job, name: str) -> None:
        self.job = job
        self.name = name
        self.enqueued_at = time.perf_counter()
        self.started_at: float | None = None
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None

    @property
    def queue_ms(self) -> float:
        end = self.started_at if self.started_at is not None else time.perf_counter()
        return (end - self.enqueued_at) * 1000

    def cancel(self) -> None:
        self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: Any) -> None:
        self._events.put(event)

    def finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._events.put(_END)

    def events(self) -> Iterator[Any]:
        """Events as the job emits them; re-raises the job's error after the last one."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        """Like events(), but each item is every event that was waiting: a fast decoder's tokens travel
        together instead of one message each, and a slow one's still go out one by one, at once."""
        while True:
            batch = [self._events.get()]
            while not self._events.empty() and batch[-1] is not _END:
                batch.append(self._events.get_nowait())
            done = batch[-1] is _END
            if done:
                batch.pop()
            if batch:
                yield batch
            if done:
                break
        if self._error is not None:
            raise self._error


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
        self._stopping = True
        while True:
            try:
                handle = self._queue.get_nowait()
            except queue.Empty:
                break
            if handle is not None:
                handle.finish(ShuttingDown("the daemon is shutting down"))
        current = self._current
        if current is not None:
            current.cancel()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # -- work ------------------------------------------------------------------------------------------------

    def submit(self, job: Job, name: str = "job") -> JobHandle:
        if self._stopping:
            raise ShuttingDown("the daemon is shutting down")
        handle = JobHandle(job, name)
        try:
            self._queue.put_nowait(handle)
        except queue.Full:
            raise QueueFull(f"{self.max_queue} requests are already waiting for the decoder; try again later") from None
        return handle

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
        finally:
            self.cache.close()  # queued disk snapshots land before the process ends
            self.backend.close()

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
            handle.finish(Cancelled())
            return
        self._current = handle
        handle.started_at = time.perf_counter()
        session = DecoderSession(self.backend, self.cache, handle.is_cancelled, queue_ms=handle.queue_ms,
                                 frame=self._frame, live=self._live, tokens=self._tokens,
                                 checkpoint_interval=self.checkpoint_interval)
        error: BaseException | None = None
        try:
            handle.job(session, handle.emit)
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
            handle.finish(error)
