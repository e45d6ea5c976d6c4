"""The batching engine: the one thread that calls a multi-sequence backend, decoding many sequences per step.

Why: decoding is memory-bound, so the next token of every generating sequence costs little more in one forward
pass (Backend.decode_batch) than one token alone. Jobs run in their own threads, each driving its own sequence
through a proxy (daemon/seq_proxy.py) that hands every backend call to this engine and blocks; the engine
gathers the token appends that wait and evaluates them together:

  * every waiting one-token append (a generating sequence's next token) goes into the step;
  * plus at most ONE prefill chunk: the highest-priority waiting prefill (interactive before background; a
    background prefill passed over STARVATION_STEPS steps gets one chunk first), cut to what is left of
    `batch_capacity` (and on a slow machine, while others decode, to what it evaluates in CHUNK_SECONDS). A
    16k-token prefill thus never freezes the other streams for its whole length, and an interactive question's
    prefill waits for at most the one background chunk already in flight (a starting interactive job holds new
    background chunks back while it lays its prompt out: see `expect`).

Every other call (media, snapshot, restore, reset, tokenize) runs between steps, in arrival order. Before a
step, the engine waits up to GATHER_SECONDS for the sequences it decoded in the step before (their job threads
are sampling their next token) so they land in the same batch instead of each getting a step of its own.

Who runs a step: where the backend may be called from any thread (`Backend.any_thread`: llama.cpp), a job
thread that waits and finds no step under way runs the step itself, for everyone waiting (leader/follower), so
a token costs no hand-off to another thread and back (measured: one stream through an engine thread ran at a
third of the one-sequence speed on the tiny model). A thread-affine backend (mlx) is stepped by the owner
thread only (`step`), as the one thread that ever touches it.

Cancellation: a waiting append whose `should_stop` turns True is answered at the next step (prefill: stopped,
decode: Cancelled), so a cancelled request frees its sequence within one step. Every step is recorded
(`records()`): tests and Status read what the engine really did, never wall time.

What it cannot cut: a media segment (an image, an audio clip) is one `append` call, its encoder and its
evaluation included, so it runs whole between two steps.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from omnid.daemon.priorities import Priority
from omnid.daemon.session import Cancelled
from omnid.models.base import Backend, check_room

T = TypeVar("T")
log = logging.getLogger(__name__)

#: How long a step waits for the sequences decoded in the step before. Measured: a job thread comes back with
#: its next token 0.13 ms (median; 0.26 ms at the 90th percentile) after its logits, four greedy streams on the
#: tiny hybrid model on a 2-core machine; a sequence that does not come back (its answer ended) costs this once.
GATHER_SECONDS = 0.001
#: How long a starting interactive job holds background prefill chunks back, at most (see BatchEngine.expect).
PREPARE_SECONDS = 0.1
#: Rounds of calls a step answers before it decodes (see BatchEngine.step).
CALL_ROUNDS = 16
#: A background prefill passed over this many steps by interactive prefills gets the next chunk.
STARVATION_STEPS = 32
#: Step records kept (Status and the tests read the recent ones).
HISTORY = 4096
#: How long a step with a prefill chunk may take while other sequences decode in it, by the machine's measured
#: rate: the chunk is cut to what that rate evaluates in this time (never under MIN_CHUNK_TOKENS). Why: every
#: decoding stream waits for the step. A GPU evaluates a whole batch in far less (nothing changes there); a 30B
#: model on a CPU prefills 50-100 tokens/s, where a 512-token chunk froze every stream for 5-10 s. A prefill that
#: no stream waits for keeps whole batches (a MoE model's prefill is much slower per token in small ones).
CHUNK_SECONDS = 0.5
#: The smallest chunk the rate may cut to (a CPU's prefill is still efficient at this batch size).
MIN_CHUNK_TOKENS = 32
#: How much of the tokens and seconds measured so far the rate keeps at each new chunk step (decaying sums, so
#: it follows the machine, and a step weighs by its tokens: a few-token step's fixed cost hardly moves it).
RATE_MEMORY = 0.7


@dataclass(frozen=True)
class StepRecord:
    """One decode_batch: which sequences decoded their next token, and whose prefill chunk went along."""

    index: int
    decoded: tuple[int, ...]
    #: (sequence, tokens, priority) of the prefill chunk in this step, or None.
    prefill: tuple[int, int, Priority] | None
    #: Sequences whose prefill waited when the step was made up (the chosen one included).
    waiting_prefills: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.decoded) + (self.prefill[1] if self.prefill else 0)


@dataclass(eq=False)
class _Request:
    """What a job thread waits on: its sequence, its answer (or error) and its event. The state is keyword-only so
    that the requests' own fields follow `seq` in their constructors."""

    seq: int
    #: Set when answered, or (where job threads lead) when this request's thread is handed the next step.
    done: threading.Event = field(default_factory=threading.Event, kw_only=True)
    answered: bool = field(default=False, kw_only=True)
    #: This request's thread was handed the next step (and is not answered yet).
    promoted: bool = field(default=False, kw_only=True)
    error: BaseException | None = field(default=None, kw_only=True)


@dataclass(eq=False)
class _Append(_Request):
    """Tokens a job thread waits to have evaluated at the end of its sequence."""

    tokens: Sequence[int]
    priority: Priority
    should_stop: Callable[[], bool] | None
    offset: int = 0
    passed_over: int = 0
    #: Arrival number: prefills of one class are served in arrival order.
    order: int = 0
    logits: np.ndarray | None = None
    stopped: bool = False

    @property
    def is_prefill(self) -> bool:
        return len(self.tokens) > 1


@dataclass(eq=False)
class _Call(_Request):
    """Any other backend call, run on the selected sequence between steps."""

    fn: Callable[[Backend], Any]
    result: Any = None


class BatchEngine:
    """Owns the backend's calls: job threads call `call` and `append` (and, where they lead, run the steps); the
    owner thread calls `step`."""

    def __init__(self, backend: Backend, gather_seconds: float = GATHER_SECONDS) -> None:
        self.backend = backend
        self.gather_seconds = gather_seconds
        self._cond = threading.Condition()
        self._calls: deque[_Call] = deque()
        self._appends: dict[int, _Append] = {}
        #: Sequences decoded in the last step whose jobs still run: the next step waits a moment for them.
        self._recent: set[int] = set()
        #: Interactive jobs just started, by sequence, until their first append (or the deadline): no background
        #: prefill chunk begins meanwhile (see `expect`).
        self._preparing: dict[int, float] = {}
        self._closed: BaseException | None = None
        self._woken = False
        #: Job threads run the steps themselves (see the module docstring); the owner thread only waits for wakes.
        self._leads = backend.any_thread
        #: A job thread leads a step now, or has been handed the next one (only where job threads lead).
        self._stepping = False
        #: The owner thread's wake where job threads lead (its own event: every token's notify would wake it).
        self._owner_woken = threading.Event()
        self._orders = itertools.count()
        self.steps: deque[StepRecord] = deque(maxlen=HISTORY)
        self.steps_total = 0
        self.tokens_total = 0
        #: See CHUNK_SECONDS; the decaying tokens and seconds of the steps that carried a prefill chunk.
        self.chunk_seconds = CHUNK_SECONDS
        self._rate_tokens = 0.0
        self._rate_seconds = 0.0

    # -- the job threads' side -------------------------------------------------------------------------------

    def call(self, seq: int, fn: Callable[[Backend], T]) -> T:
        """Run fn(backend) with `seq` selected, between steps; its result or its error."""
        request = _Call(seq, fn)
        self._enqueue(lambda: self._calls.append(request))
        self._wait_for(request)
        if request.error is not None:
            raise request.error
        return request.result

    def append(self, seq: int, tokens: Sequence[int], priority: Priority,
               should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
        """Evaluate tokens at the end of `seq` in the coming steps; the next-token logits after them, or None when
        `should_stop` stopped a prefill part-way (the sequence is then in an unspecified state: the caller
        resets). A cancelled one-token append raises Cancelled."""
        request = _Append(seq, tokens, priority, should_stop)

        def put() -> None:
            assert seq not in self._appends, f"sequence {seq} already waits for an append"
            self._preparing.pop(seq, None)
            request.order = next(self._orders)
            self._appends[seq] = request
        self._enqueue(put)
        self._wait_for(request)
        if request.error is not None:
            raise request.error
        return None if request.stopped else request.logits

    def _wait_for(self, request: _Request) -> None:
        """Until `request` is answered. Where job threads lead: run the step here when none is under way, else
        sleep on the request's own event until it is answered or this thread is handed the next step (by the
        thread that ran the last one, when requests still wait). Why handed, not a free-for-all on the
        condition: every waiter woken at every notify costs a GIL round each, N times a step."""
        if not self._leads:
            request.done.wait()
            return
        with self._cond:
            leading = not self._stepping
            self._stepping = True
        while True:
            if not leading:
                request.done.wait()
                with self._cond:
                    if not request.promoted:
                        return  # answered
                    request.promoted, leading = False, True
                    request.done.clear()
            try:
                if not request.answered:
                    self._step(request)
            except BaseException:
                self._pass_on()
                raise
            if request.answered:
                self._pass_on()
                return

    def _pass_on(self) -> None:
        """The leading thread is done: hand the next step to a thread whose request still waits, or none."""
        with self._cond:
            waiting = next(iter(self._appends.values()), None) or next(iter(self._calls), None)
            if waiting is None:
                self._stepping = False
            else:
                waiting.promoted = True
                waiting.done.set()

    def _enqueue(self, put: Callable[[], None]) -> None:
        with self._cond:
            if self._closed is not None:
                raise self._closed
            put()
            self._cond.notify_all()

    # -- the owner thread's side ------------------------------------------------------------------------------

    def wake(self) -> None:
        """End a `step` that waits for work (the scheduler has something to do)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()
        self._owner_woken.set()

    def release(self, seq: int) -> None:
        """The job on `seq` ended: the next step does not wait for it."""
        with self._cond:
            self._recent.discard(seq)
            self._preparing.pop(seq, None)
            self._cond.notify_all()

    def close(self, error: BaseException) -> None:
        """Answer everything waiting, and every later request, with `error` (the model goes away)."""
        with self._cond:
            self._closed = error
            waiting: list[_Request] = [*self._calls, *self._appends.values()]
            self._calls.clear()
            self._appends.clear()
        for request in waiting:
            request.error = error
            request.answered = True
            request.done.set()

    def reopen(self, backend: Backend) -> None:
        """Serve a newly loaded backend."""
        with self._cond:
            self.backend, self._closed, self._recent, self._preparing = backend, None, set(), {}
            self._leads, self._stepping = backend.any_thread, False

    def records(self) -> list[StepRecord]:
        """The recent steps, the oldest first (a copy: the engine goes on appending)."""
        with self._cond:
            return list(self.steps)

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._calls or self._appends)

    def expect(self, seq: int, priority: Priority) -> None:
        """A job was just started on `seq`: the next step waits a moment for its first request, and an
        interactive one holds background prefill chunks back until its own prefill is waiting (at most
        PREPARE_SECONDS). Why: a question lays its prompt out (tokenizing, a cache lookup, maybe a restore)
        in several calls; without the hold each could let another background chunk begin, where the promise
        is that a question's first token waits for at most the one chunk already under way."""
        with self._cond:
            self._recent.add(seq)
            if priority == Priority.INTERACTIVE:
                self._preparing[seq] = time.perf_counter() + PREPARE_SECONDS

    def step(self, timeout: float | None) -> None:
        """The owner thread's turn: wait (up to `timeout`) for work or a `wake`, then run the waiting calls and one
        decode step. Where job threads lead (see the module docstring) it only waits for a `wake`."""
        if self._leads:
            self._owner_woken.wait(timeout)
            self._owner_woken.clear()
            return
        with self._cond:
            if not self._calls and not self._appends and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
        self._step()

    def _step(self, mine: _Request | None = None) -> None:
        """Run the waiting calls and one decode step, on whichever thread runs steps: the owner thread, or the
        job thread whose request is `mine` (it returns as soon as its own call is answered: it cannot come back
        with another while it runs the step, and the step's decode is handed to a thread that waits for it).

        Calls are answered in rounds: after each, the sequences that made them (and those decoded last step)
        get GATHER_SECONDS to come back, with another call or with their append, before the step is made up.
        So a question that tokenizes its prompt, looks it up and begins its prefill does it between two steps,
        not one round trip per step behind a background chunk (at most CALL_ROUNDS rounds a step)."""
        for _ in range(CALL_ROUNDS):
            with self._cond:
                calls = list(self._calls)
                self._calls.clear()
            for request in calls:
                self._run_call(request)
            with self._cond:
                self._recent.update(r.seq for r in calls)
            if mine is not None and mine.answered:
                return
            with self._cond:
                awaited = self._recent - {mine.seq} if mine is not None else self._recent
                deadline = time.perf_counter() + self.gather_seconds
                while awaited - self._appends.keys() and not self._calls:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._calls:
                    break
        with self._cond:
            appends = list(self._appends.values())
            now = time.perf_counter()
            self._preparing = {seq: t for seq, t in self._preparing.items() if t > now}
            hold = min(self._preparing.values(), default=0.0)
        if appends and not self._decode_safely(appends, hold_background=bool(hold)):
            with self._cond:  # only held background prefills wait: until the question's append, or the deadline
                if not self._calls:
                    self._cond.wait(max(0.0, hold - time.perf_counter()))

    def _run_call(self, request: _Call) -> None:
        try:
            self.backend.select(request.seq)
            request.result = request.fn(self.backend)
        except BaseException as exc:  # the job thread gets it; the engine goes on
            request.error = exc
        request.answered = True
        request.done.set()

    def _decode_safely(self, appends: list[_Append], hold_background: bool) -> bool:
        """_decode; an error of the engine's own (never a sequence's: those go to their jobs) fails the appends of
        this step instead of ending the thread every request depends on."""
        try:
            return self._decode(appends, hold_background)
        except Exception as exc:
            log.exception("a decode step failed")
            for request in appends:
                if not request.answered:
                    request.error = exc
                    self._answer(request)
            return True

    def _decode(self, appends: list[_Append], hold_background: bool = False) -> bool:
        """One decode_batch over the waiting appends (see the module docstring); False when nothing could run."""
        live: list[_Append] = []
        for request in appends:
            if request.should_stop is not None and request.should_stop():
                if request.is_prefill:
                    request.stopped = True
                else:
                    request.error = Cancelled()
                self._answer(request)
            else:
                live.append(request)
        decodes = [r for r in live if not r.is_prefill]
        prefills = [r for r in live if r.is_prefill]
        candidates = [r for r in prefills if not hold_background or self._prefill_rank(r)[0] <= Priority.INTERACTIVE]
        decodes = decodes[:self.backend.batch_capacity]  # the rest wait for the next step (never with N <= n_batch)
        room = self.backend.batch_capacity - len(decodes)
        chosen = min(candidates, key=self._prefill_rank, default=None) if room > 0 else None
        work: dict[int, Sequence[int]] = {r.seq: r.tokens for r in decodes}
        if chosen is not None and not self._check_room(chosen):
            chosen = None
        chunk = 0
        for other in prefills:  # passed over (by another prefill, or held back): the age bound counts it
            if other is not chosen and other.priority == Priority.BACKGROUND:
                other.passed_over += 1
        if chosen is not None:
            chunk = min(room, len(chosen.tokens) - chosen.offset, self._chunk_cap(chosen) if decodes else room)
            work[chosen.seq] = list(chosen.tokens[chosen.offset:chosen.offset + chunk])
            chosen.passed_over = 0
        if not work:
            return False
        started = time.perf_counter()
        logits = self._evaluate(work, decodes + ([chosen] if chosen is not None else []))
        if chosen is not None:
            self._measure(len(decodes) + chunk, time.perf_counter() - started)
        record = StepRecord(self.steps_total, tuple(r.seq for r in decodes),
                            (chosen.seq, chunk, chosen.priority) if chosen is not None else None,
                            tuple(r.seq for r in prefills))
        with self._cond:
            self.steps.append(record)
            self.steps_total += 1
            self.tokens_total += record.tokens
        recent = set()
        for request in decodes:
            if request.error is None:
                request.logits = logits.get(request.seq)
                recent.add(request.seq)
            self._answer(request)
        if chosen is not None:
            chosen.offset += chunk
            if chosen.error is not None or chosen.offset >= len(chosen.tokens):
                chosen.logits = logits.get(chosen.seq)
                self._answer(chosen)
        with self._cond:
            self._recent = recent
        return True

    def _chunk_cap(self, chosen: _Append) -> int:
        """The most tokens of `chosen` a step that decodes other sequences may carry (see CHUNK_SECONDS); no bound
        until a chunk step has been timed."""
        if not self._rate_seconds:
            return len(chosen.tokens)
        return max(MIN_CHUNK_TOKENS, int(min(len(chosen.tokens), self.prefill_rate * self.chunk_seconds)))

    @property
    def prefill_rate(self) -> float:
        """Tokens per second of the recent steps that carried a prefill chunk (0.0 before the first)."""
        return self._rate_tokens / self._rate_seconds if self._rate_seconds else 0.0

    def _measure(self, tokens: int, seconds: float) -> None:
        self._rate_tokens = RATE_MEMORY * self._rate_tokens + tokens
        self._rate_seconds = RATE_MEMORY * self._rate_seconds + max(seconds, 1e-9)

    def _evaluate(self, work: dict[int, Sequence[int]], requests: list[_Append]) -> dict[int, np.ndarray]:
        """decode_batch; when it fails, each sequence alone, so only the one at fault gets the error (a failed
        decode_batch leaves every sequence as it was)."""
        try:
            return self.backend.decode_batch(work)
        except Exception as exc:
            if len(work) == 1:
                requests[0].error = exc
                return {}
        out: dict[int, np.ndarray] = {}
        for request in requests:
            try:
                out.update(self.backend.decode_batch({request.seq: work[request.seq]}))
            except Exception as exc:
                request.error = exc
        return out

    def _check_room(self, request: _Append) -> bool:
        """A prefill that cannot fit fails before its first chunk (the contract: nothing evaluated)."""
        if request.offset:
            return True
        try:
            self.backend.select(request.seq)
            check_room(self.backend.n_tokens, len(request.tokens), self.backend.info.context_length)
        except Exception as exc:
            request.error = exc
            self._answer(request)
            return False
        return True

    @staticmethod
    def _prefill_rank(request: _Append) -> tuple[int, int]:
        """Lower goes first: a starved background prefill (its one chunk, then it waits again), interactive ones,
        background ones; each in arrival order."""
        starved = request.priority == Priority.BACKGROUND and request.passed_over >= STARVATION_STEPS
        return (-1 if starved else int(request.priority)), request.order

    def _answer(self, request: _Append) -> None:
        with self._cond:
            if self._appends.get(request.seq) is request:
                del self._appends[request.seq]
        request.answered = True
        request.done.set()
