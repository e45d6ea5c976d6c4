"""The one owner of the model: loads it, queues jobs, runs them on the decoder, several at once where it can.

Like Ollama's scheduler, one object owns the model's lifetime: the backend is created on the scheduler's own
worker thread and every call into it happens there (MLX and llama.cpp contexts are not thread-safe), so a burst
of first requests cannot load the model twice.

A job is a function `job(session, emit) -> result`: it uses the DecoderSession, reports typed events
(daemon/events.py) through `emit` and returns a typed result. Front ends submit jobs and read
`JobHandle.events()` / `JobHandle.result()` in their own threads. The queue is bounded per class
(QueueFull -> RESOURCE_EXHAUSTED) and ordered by daemon/priorities.py: interactive work before background
work, background never starved, a per-client cap. A cancelled handle stops its job at the next token or
segment, and its sequence is free for the next job at once.

One sequence (every backend but a multi-sequence llama.cpp or mlx one): the worker thread runs one job at a
time itself, on the backend, as it always did (nothing to batch; no hand-off costs per token). Several
sequences (`omnid serve --parallel N`): each running job holds one sequence and runs in its own thread over a
SequenceBackend proxy (daemon/seq_proxy.py); the worker thread is the BatchEngine (daemon/batch_engine.py),
which decodes every waiting sequence's next token, and one prefill chunk, in one step. A remote engine
(--backend remote) batches concurrent requests itself: there each running job streams from the engine in its
own thread, through the backend bound to its sequence (RemoteBackend.on_sequence), with no engine between.

Unloading (`omni unload`, `omnid serve --idle-unload`): the model can be freed when no job runs, on the
worker thread like everything else that touches it; the next job loads it again first (its queue time includes
the load). The prompt cache is kept: the same weights give the same fingerprint, so its entries stay valid.
"""
from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

from omnid.daemon.batch_engine import GATHER_SECONDS, BatchEngine
from omnid.daemon.events import PrefillProgress, Progress, ReasoningDelta, TextDelta
from omnid.daemon.prefill_rate import PrefillRate
from omnid.daemon.priorities import AdmissionQueue, Priority, QueueFull, priority_of
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.seq_proxy import SequenceBackend, VocabularyTable
from omnid.daemon.session import DEFAULT_CHECKPOINT_INTERVAL, Cancelled, DecoderSession
from omnid.daemon.token_chain import ANCHOR, LiveSequence, TokenChain, TokenizerCache
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
        #: Its class (daemon/priorities.py), the client that sent it, and the sequence it runs on (-1: none yet).
        self.priority = Priority.INTERACTIVE
        self.client = ""
        self.sequence = -1
        #: The batching engine's step count when it was started (its step records tell what it waited for).
        self.admitted_step = 0

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
    """Owns the backend on one worker thread; runs queued jobs by priority, several at once on a multi-sequence
    backend (see the module docstring)."""

    def __init__(self, load_backend: Callable[[], Backend], make_cache: Callable[[Backend], PromptCache],
                 max_queue: int = 16, idle_unload_seconds: float = 0.0, max_background_queue: int | None = None,
                 gather_seconds: float = GATHER_SECONDS) -> None:
        self._load_backend = load_backend
        self._make_cache = make_cache
        self.max_queue = max_queue
        self._queue: AdmissionQueue[JobHandle] = AdmissionQueue({
            Priority.INTERACTIVE: max_queue,
            Priority.BACKGROUND: max_queue if max_background_queue is None else max_background_queue})
        self._thread = threading.Thread(target=self._run, name="omnid-decoder", daemon=True)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        #: Guards _stopping, the running jobs, the free sequences and the unload requests.
        self._lock = threading.Lock()
        self._stopping = False
        #: Set to wake the worker thread when it waits without an engine (one sequence).
        self._wake = threading.Event()
        #: The running jobs by sequence, and the sequences free now (the least recently used first).
        self._running: dict[int, JobHandle] = {}
        self._free: list[int] = [0]
        #: The sequence each client used last: its next job goes there if it is free (its live chain may
        #: hold the client's prefix).
        self._last_seq: dict[str, int] = {}
        self._unloads: list[tuple[int, _Unload]] = []
        self._job_threads: set[threading.Thread] = set()
        self.backend: Backend | None = None
        #: The batching engine, with a multi-sequence backend (None with one sequence: jobs run on this thread).
        self.engine: BatchEngine | None = None
        #: A remote engine with several sequences: jobs run in their own threads, streaming from it directly.
        self._streams = False
        self._gather_seconds = gather_seconds
        self._vocabulary = VocabularyTable()
        self.cache: PromptCache | None = None
        self._frame: ChatFrame | None = None
        #: What each sequence holds between jobs (see DecoderSession: cut back instead of restoring).
        self._lives: list[LiveSequence] = [LiveSequence()]
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
        self._n_sequences = 1
        self._last_active = time.monotonic()
        self._local = threading.local()

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
            running = list(self._running.values())
        self._finish_left()
        for handle in running:
            handle.cancel()
        self._notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- work ------------------------------------------------------------------------------------------------

    def submit(self, job: Job, name: str = "job", client: str = "") -> JobHandle:
        """Queue a job (its class from its name, see daemon/priorities.py; `client` for the per-client cap)."""
        handle: JobHandle = JobHandle(job, name)
        handle.priority = priority_of(name)
        handle.client = client
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the daemon is shutting down")
            self._queue.push(handle, handle.priority, client)
        self._notify()
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
            if len(self._unloads) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting for the decoder; "
                                "try again later")
            self._unloads.append((self._queue.next_order(), request))
        self._notify()
        request.done.wait(timeout)
        return request.was_loaded

    def empty_sequence(self) -> None:
        """Empty the calling job's sequence and every idle one, so nothing of what they held can be reused
        (deleting a document). Call it only from inside a job."""
        seq = getattr(self._local, "seq", None)
        backend = getattr(self._local, "backend", None)
        assert seq is not None and backend is not None, "empty_sequence is for jobs"
        with self._lock:  # the idle sequences are taken out of the free list while they are emptied
            idle, self._free = self._free, []
        try:
            backend.reset()
            self._lives[seq].clear()
            for other in idle:
                if self.engine is not None:
                    self.engine.call(other, lambda b: b.reset())
                self._lives[other].clear()
        finally:
            with self._lock:
                self._free = idle + self._free
            self._notify()

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
        return self._queue.depth()

    def queue_depth_of(self, priority: Priority) -> int:
        return self._queue.depth(priority)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def n_sequences(self) -> int:
        """Sequences the backend holds (jobs that run at once)."""
        return self._n_sequences

    @property
    def sequences_in_use(self) -> int:
        return len(self._running)

    def jobs(self) -> tuple[list[JobHandle], list[JobHandle]]:
        """The running jobs (the oldest first) and the jobs waiting, the next to run first."""
        with self._lock:
            running = sorted(self._running.values(), key=lambda h: h.started_at or 0.0)
        return running, self._queue.waiting()

    def batch_stats(self, recent: int = 64) -> tuple[float, float, int]:
        """Mean sequences and tokens per decode step over the last `recent` steps, and the steps so far."""
        engine = self.engine
        if engine is None:
            return 0.0, 0.0, 0
        steps = engine.records()[-recent:]
        if not steps:
            return 0.0, 0.0, engine.steps_total
        sequences = sum(len(s.decoded) + (s.prefill is not None) for s in steps) / len(steps)
        return sequences, sum(s.tokens for s in steps) / len(steps), engine.steps_total

    # -- the worker thread -------------------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake the worker thread (a job was queued or ended, an unload asked, the daemon stops)."""
        engine = self.engine
        if engine is not None:
            engine.wake()
        self._wake.set()

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported by start(); the thread ends
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        try:
            while not self._stopping:
                if self._unload_due():
                    continue
                handle = self._admit()
                if handle is not None:
                    continue
                if self._idle_unload_due():
                    log.warning("no requests for %.0f s: unloading the model (the next request loads it again)",
                                self.idle_unload_seconds)
                    self._unload()
                    continue
                self._wait()
            self._wind_down()
        finally:
            assert self.cache is not None
            self.cache.close()  # queued disk snapshots land before the process ends
            if self.backend is not None:
                self.backend.close()

    def _wait(self) -> None:
        """Until there is something to do: the engine's next step (which waits for work itself), or a wake."""
        timeout = self._idle_timeout()
        engine = self.engine
        if engine is not None and self._running:
            engine.step(timeout)
            return
        self._wake.wait(timeout)
        self._wake.clear()

    def _admit(self) -> JobHandle | None:
        """Start the next waiting job on a free sequence, if there is one (loading the model first if needed)."""
        with self._lock:
            if not self._free:
                return None
            before = self._unloads[0][0] if self._unloads else None
            held: dict[str, int] = {}
            for running in self._running.values():
                held[running.client] = held.get(running.client, 0) + 1
            cap = max(1, self._n_sequences - 1)
            background = self._n_sequences == 1 or len(self._free) > 1
            handle = self._queue.take(held, cap, background, before)
        if handle is None:
            return None
        if handle.is_cancelled():
            handle.finish(error=Cancelled())
            return handle
        if self._stopping:
            handle.finish(error=ShuttingDown("the daemon is shutting down"))
            return handle
        if self.backend is None and not self._reload(handle):
            return handle
        with self._lock:
            seq = self._last_seq.get(handle.client, -1)
            seq = seq if seq in self._free and handle.client else self._free[0]
            self._free.remove(seq)
            self._running[seq] = handle
            self._last_seq[handle.client] = seq
        handle.sequence = seq
        handle.started_at = time.perf_counter()
        if self.engine is None and not self._streams:
            self._run_one(handle, seq, self.backend)  # type: ignore[arg-type]  # loaded just above
            return handle
        target = self._job_thread if self.engine is not None else self._stream_thread
        thread = threading.Thread(target=target, args=(handle, seq), name=f"omnid-seq{seq}", daemon=True)
        with self._lock:
            self._job_threads.add(thread)
        if self.engine is not None:
            handle.admitted_step = self.engine.steps_total
            self.engine.expect(seq, handle.priority)
        thread.start()
        return handle

    def _stream_thread(self, handle: JobHandle, seq: int) -> None:
        """A job on a sequence of a remote engine, in its own thread: it streams its answer from the engine
        while the other sequences' jobs stream theirs (the engine batches them)."""
        backend = self.backend
        assert isinstance(backend, RemoteGeneration)
        try:
            self._run_one(handle, seq, backend.on_sequence(seq))
        finally:
            with self._lock:
                self._job_threads.discard(threading.current_thread())
            self._notify()

    def _job_thread(self, handle: JobHandle, seq: int) -> None:
        """A job on a sequence of the batching engine, in its own thread."""
        engine = self.engine
        assert engine is not None
        try:
            proxy = SequenceBackend(engine, seq, handle.priority, handle.is_cancelled, self._vocabulary)
        except BaseException as exc:  # the engine closed (the daemon stops) before the job began
            with self._lock:
                self._free_sequence(seq)
            handle.finish(error=exc)
        else:
            self._run_one(handle, seq, proxy, lambda target: self._choose_sequence(handle, proxy, target))
        finally:
            engine.release(handle.sequence)
            with self._lock:
                self._job_threads.discard(threading.current_thread())
            self._notify()

    def _choose_sequence(self, handle: JobHandle, proxy: SequenceBackend, target: TokenChain) -> LiveSequence:
        """At a job's first prefill: move it to the free sequence whose live chain it can reuse most of, if that
        is more than its own gives (what a client left in a sequence serves whoever continues it, not only
        that client). Only before the job changed its sequence; the sequence it leaves is free again."""
        assert self.engine is not None and self.backend is not None
        can_cut = self.backend.can_truncate

        def reusable(seq: int) -> int:
            chain = self._lives[seq].chain
            shared = chain.common_prefix(target)
            return shared if can_cut or shared == len(chain) else 0
        with self._lock:
            here = handle.sequence
            if proxy.touched or not self._free:
                return self._lives[here]
            best = max(self._free, key=reusable)
            if reusable(best) <= reusable(here):
                return self._lives[here]
            self._free.remove(best)
            self._free.append(here)
            del self._running[here]
            self._running[best] = handle
            self._last_seq[handle.client] = best
            handle.sequence = best
        self._local.seq = best
        proxy.retarget(best)
        self.engine.release(here)
        self.engine.expect(best, handle.priority)
        self._notify()
        return self._lives[best]

    def _free_sequence(self, seq: int) -> None:
        """The job on `seq` is over (caller holds the lock)."""
        self._running.pop(seq, None)
        self._free.append(seq)
        self._last_active = time.monotonic()

    def _unload_due(self) -> bool:
        """Serve the first unload request once every job queued before it is done; True if one was served."""
        with self._lock:
            if not self._unloads or self._running:
                return False
            order, request = self._unloads[0]
            if self._queue.any_before(order):
                return False
            self._unloads.pop(0)
        request.was_loaded = self._unload()
        request.done.set()
        return True

    def _idle_unload_due(self) -> bool:
        return bool(self.idle_unload_seconds and self.backend is not None and not self._running
                    and not self._queue.depth() and self._idle_timeout() == 0.0)

    def _wind_down(self) -> None:
        """At stop: the cancelled jobs end (their waiting steps answered), then everything left is refused."""
        deadline = time.monotonic() + 10.0
        while self._running and time.monotonic() < deadline:
            if self.engine is not None:
                self.engine.step(0.05)
            else:  # a remote engine's job threads see the cancellation within one poll and end
                self._wake.wait(0.05)
                self._wake.clear()
        if self.engine is not None:
            self.engine.close(ShuttingDown("the daemon is shutting down"))
        with self._lock:
            threads = list(self._job_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._finish_left()

    def _load(self) -> None:
        self.backend = self._load_backend()
        if self.cache is None or self.cache.fingerprint != self.backend.info.fingerprint:
            if self.cache is not None:  # the files changed while unloaded: their old entries do not apply
                self.cache.close()
                self._tokens = TokenizerCache()
            self.cache = self._make_cache(self.backend)
            self._vocabulary = VocabularyTable()
        self._info = self.backend.info
        self._frame = self.backend.chat_frame()  # rendered once: every job lays prompts out with it
        n = max(1, self.backend.n_sequences)
        if n != self._n_sequences or len(self._lives) != n:
            self._n_sequences = n
            self._lives = [LiveSequence() for _ in range(n)]
        with self._lock:
            self._free = [s for s in range(n) if s not in self._running]
        self._warm_up()
        remote = isinstance(self.backend, RemoteGeneration)
        self._streams = remote and n > 1
        self.engine = BatchEngine(self.backend, self._gather_seconds) if n > 1 and not remote else None
        self._last_active = time.monotonic()

    def _reload(self, handle: JobHandle) -> bool:
        """Load the unloaded model for a job; a failure fails that job (the next one tries again)."""
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
        backend, self.backend, self.engine = self.backend, None, None
        for live in self._lives:
            live.clear()
        backend.close()
        del backend
        gc.collect()  # the backend's Python objects hold the weights' buffers: free them now, not later
        return True

    def _idle_timeout(self) -> float | None:
        if not self.idle_unload_seconds or self.backend is None or self._running:
            return None
        return max(0.0, self._last_active + self.idle_unload_seconds - time.monotonic())

    def _finish_left(self) -> None:
        """Everything still queued ends with ShuttingDown (at stop): no submitter may wait forever."""
        for handle in self._queue.drain():
            handle.finish(error=ShuttingDown("the daemon is shutting down"))
        with self._lock:
            unloads, self._unloads = self._unloads, []
        for _, request in unloads:
            request.done.set()  # the model is freed by the shutdown itself

    def _warm_up(self) -> None:
        """Run one tiny request through the whole job path (layout, prefill, sampling, one-token decodes), so
        the first client does not pay for one-time set-up: llama.cpp's compute graphs and buffers, MLX's
        kernels, first calls into the sampler (measured here: 0.8 s for llama.cpp's first decode on the tiny
        model). A private cache with no budget keeps this out of the shared cache and its statistics."""
        assert self.backend is not None and self._frame is not None and self.cache is not None
        self.backend.select(0)
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

    def _run_one(self, handle: JobHandle, seq: int, backend: Backend,
                 choose: Callable[[TokenChain], LiveSequence] | None = None) -> None:
        """Run a job on sequence `seq` through `backend` (the backend itself, or its proxy in a job thread, with
        `choose` to move it to a better sequence at its first prefill)."""
        assert self.cache is not None
        self._local.seq, self._local.backend = seq, backend
        live = self._lives[seq]
        error: BaseException | None = None
        result: Any = None
        try:
            session = DecoderSession(backend, self.cache, handle.is_cancelled, queue_ms=handle.queue_ms,
                                     frame=self._frame, live=live, tokens=self._tokens,
                                     checkpoint_interval=self.checkpoint_interval, rate=self.prefill_rate,
                                     choose_sequence=choose)
            result = handle.job(session, handle.emit)
        except Cancelled as exc:
            error = ShuttingDown("the daemon is shutting down") if self._stopping else exc
        except ShuttingDown as exc:
            error = exc
        except Exception as exc:  # the daemon never dies from one job; the submitter gets the error
            if not isinstance(exc, InputError):
                log.exception("job %s failed", handle.name)
            error = exc
        finally:
            seq = handle.sequence if handle.sequence >= 0 else seq  # `choose` may have moved it
            live = self._lives[seq]
            if error is not None:
                live.clear()
                try:
                    backend.reset()  # a failed or cancelled job may leave a half-evaluated sequence
                except ShuttingDown:
                    pass  # the engine closed: the model goes away with the daemon
            self._local.seq = self._local.backend = None
            with self._lock:
                self._free_sequence(seq)
            handle.finish(result, error)
