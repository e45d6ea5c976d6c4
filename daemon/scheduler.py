"""The one owner of the model: loads it, queues jobs, runs them one at a time on the decoder.

Like Ollama's scheduler, one object owns the model's lifetime: the backend is created on the scheduler's own
worker thread and every call into it happens there (MLX and llama.cpp contexts are not thread-safe), so no two
requests can interleave tokens and a burst of first requests cannot load the model twice.

A job is a function `job(session, emit) -> result`: it uses the DecoderSession, reports typed events
(daemon/events.py) through `emit` and returns a typed result. Front ends submit jobs and read
`JobHandle.events()` / `JobHandle.result()` in their own threads. The queue is bounded
(QueueFull -> RESOURCE_EXHAUSTED); a cancelled handle stops its job at the next token or segment, and the
decoder moves on to the next job at once.

Unloading (`omni unload`, `omnid serve --idle-unload`): the model can be freed between jobs, on the worker
thread like everything else that touches it; the next job loads it again first (its queue time includes the
load). The prompt cache is kept: the same weights give the same fingerprint, so its entries stay valid.
"""
from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

from omnid.daemon.events import PrefillProgress, Progress, ReasoningDelta, TextDelta
from omnid.daemon.prefill_rate import PrefillRate
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DEFAULT_CHECKPOINT_INTERVAL, Cancelled, DecoderSession
from omnid.daemon.token_chain import ANCHOR, LiveSequence, TokenizerCache
from omnid.models.base import Backend, ChatFrame, InputError, ModelInfo, RemoteGeneration, TextSegment

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]
#: A job: `job(session, emit) -> result`. It emits typed events (daemon/events.py) and returns a typed result.
Job = Callable[[DecoderSession, Emit], Any]
T = TypeVar("T")


class _Unload:
    """A request, queued like a job, to free the model once the jobs before it are done."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.was_loaded = False


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
        self._held: list[TextDelta | ReasoningDelta] = []
        self._last_delta = -delta_interval
        #: Told (on the decoder thread) whenever an event is queued: see notify_on.
        self._notify: Callable[[], None] | None = None
        #: The last progress the job reported (Status shows it for the running job).
        self.progress: Progress | PrefillProgress | None = None

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
        if isinstance(event, (TextDelta, ReasoningDelta)):
            if self._held and type(self._held[-1]) is not type(event):
                self._release_held()  # the thinking ended (or began): never join it with the answer
            self._held.append(event)
            now = time.perf_counter()
            if now - self._last_delta < self._interval:
                return
            self._last_delta = now
            self._release_held()
            return
        if isinstance(event, (Progress, PrefillProgress)):
            self.progress = event
        self._release_held()
        self._put(event)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """The job is over: its result, or the error its submitter gets."""
        self._release_held()
        self._result, self._error = result, error
        self._finished.set()
        self._put(_END)

    def _release_held(self) -> None:
        if self._held:
            self._put(type(self._held[0])("".join(e.text for e in self._held)))
            self._held.clear()

    def _put(self, event: Any) -> None:
        self._events.put(event)
        notify = self._notify
        if notify is not None:
            notify()

    # -- the submitter's side --------------------------------------------------------------------------------

    def events(self, idle: float | None = None) -> Iterator[Any]:
        """Events as the job emits them, deltas that were waiting joined into one; re-raises the job's error
        after the last event. With `idle`, None comes whenever that many seconds passed without an event (so a
        front end can tell a client that waits in the queue why nothing comes)."""
        while True:
            try:
                batch = [self._events.get(timeout=idle)]
            except queue.Empty:
                yield None
                continue
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

    def notify_on(self, notify: Callable[[], None]) -> None:
        """Have `notify` called (on the decoder thread; it must be quick and never raise) whenever events are
        queued, so a submitter that must not block (an event loop) takes them with `take` instead of keeping a
        thread waiting in `events`: one hand-off between threads per batch of deltas instead of two."""
        self._notify = notify
        if not self._events.empty():  # queued before notify was set
            notify()

    def take(self) -> tuple[list[Any], bool]:
        """The events queued now, without waiting (deltas joined), and whether the job is over (then `result`
        gives its result or raises its error)."""
        batch: list[Any] = []
        while not self._events.empty():
            batch.append(self._events.get_nowait())
        over = bool(batch) and batch[-1] is _END
        if over:
            batch.pop()
        return _joined(batch), over

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
    """Runs of TextDelta (and of ReasoningDelta) joined into one delta each; every other event as it was, in order."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, (TextDelta, ReasoningDelta)) and out and type(out[-1]) is type(event):
            out[-1] = type(event)(out[-1].text + event.text)
        else:
            out.append(event)
    return out


class Scheduler:
    """Owns the backend on one worker thread and runs queued jobs in order."""

    def __init__(self, load_backend: Callable[[], Backend], make_cache: Callable[[Backend], PromptCache],
                 max_queue: int = 16, idle_unload_seconds: float = 0.0) -> None:
        self._load_backend = load_backend
        self._make_cache = make_cache
        self.max_queue = max_queue
        self._queue: queue.Queue[JobHandle | _Unload | None] = queue.Queue(maxsize=max_queue)
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
        #: This machine's prefill rate, measured on the prompts jobs evaluate.
        self.prefill_rate = PrefillRate()
        #: Tokens between checkpoints on decoders that cannot be cut back (sized at start-up, see _warm_up).
        self.checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL
        #: Snapshot bytes of an empty sequence (recurrent state, logits) and per token (attention KV).
        self.state_base_bytes = 0
        self.state_bytes_per_token = 0.0
        #: Free the model after this long without jobs (0 = never).
        self.idle_unload_seconds = idle_unload_seconds
        self._info: ModelInfo | None = None
        self._last_active = time.monotonic()

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

    def unload(self, timeout: float | None = None) -> bool:
        """Free the model once the jobs queued before this call are done; True if it was loaded."""
        request = _Unload()
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the daemon is shutting down")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise QueueFull(f"{self.max_queue} requests are already waiting for the decoder; "
                                "try again later") from None
        request.done.wait(timeout)
        return request.was_loaded

    def empty_sequence(self) -> None:
        """Empty the decoder's sequence, so nothing of what it held can be reused (deleting a document).
        Call it only from inside a job: the worker thread owns the backend."""
        assert threading.current_thread() is self._thread and self.backend is not None
        self.backend.reset()
        self._live.clear()

    @property
    def info(self) -> ModelInfo | None:
        """The model's info, also while it is unloaded (it loads again the same)."""
        return self._info

    @property
    def frame(self) -> ChatFrame | None:
        """The model's chat frame (kept while unloaded, like info)."""
        return self._frame

    @property
    def loaded(self) -> bool:
        return self.backend is not None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def jobs(self) -> tuple[JobHandle | None, list[JobHandle]]:
        """The running job (None when idle) and the jobs waiting behind it, first to run first."""
        with self._queue.mutex:
            waiting = [item for item in self._queue.queue if isinstance(item, JobHandle)]
        return self._current, waiting

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported by start(); the thread ends
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self._idle_timeout())
                except queue.Empty:
                    log.warning("no requests for %.0f s: unloading the model (the next request loads it again)",
                                self.idle_unload_seconds)
                    self._unload()
                    continue
                if item is None:
                    break
                if isinstance(item, _Unload):
                    item.was_loaded = self._unload()
                    item.done.set()
                    continue
                if self.backend is None and not self._reload(item):
                    continue
                self._run_one(item)
                self._last_active = time.monotonic()
            self._finish_left()
        finally:
            assert self.cache is not None
            self.cache.close()  # queued disk snapshots land before the process ends
            if self.backend is not None:
                self.backend.close()

    def _load(self) -> None:
        self.backend = self._load_backend()
        if self.cache is None or self.cache.fingerprint != self.backend.info.fingerprint:
            if self.cache is not None:  # the files changed while unloaded: their old entries do not apply
                self.cache.close()
                self._tokens = TokenizerCache()
            self.cache = self._make_cache(self.backend)
        self._info = self.backend.info
        self._frame = self.backend.chat_frame()  # rendered once: every job lays prompts out with it
        self._warm_up()
        self._last_active = time.monotonic()

    def _reload(self, handle: JobHandle) -> bool:
        """Load the unloaded model for a job; a failure fails that job (the next one tries again)."""
        if handle.is_cancelled():
            handle.finish(error=Cancelled())
            return False
        log.warning("loading the model again for %s", handle.name)
        try:
            self._load()
        except Exception as exc:
            log.exception("loading the model again failed")
            self.backend = None
            handle.finish(error=exc)
            return False
        return True

    def _unload(self) -> bool:
        """Free the model (the cache stays); False if it was not loaded."""
        if self.backend is None:
            return False
        backend, self.backend = self.backend, None
        self._live.clear()
        backend.close()
        del backend
        gc.collect()  # the backend's Python objects hold the weights' buffers: free them now, not later
        return True

    def _idle_timeout(self) -> float | None:
        if not self.idle_unload_seconds or self.backend is None:
            return None
        return max(0.0, self._last_active + self.idle_unload_seconds - time.monotonic())

    def _finish_left(self) -> None:
        """Everything still queued ends with ShuttingDown (at stop, and after the sentinel): no submitter may
        wait forever."""
        while True:
            try:
                handle = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(handle, _Unload):
                handle.done.set()  # the model is freed by the shutdown itself
            elif handle is not None:
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
        if isinstance(self.backend, RemoteGeneration):  # the engine answered; it keeps no state omnid could size
            self.backend.reset()
            return
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
                                 checkpoint_interval=self.checkpoint_interval, rate=self.prefill_rate)
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
