"""Scheduler, JobHandle and delta coalescing, on FakeBackendForSchedulerTests (no model: fast).

Every interleaving that matters is forced with events and hooks, never with sleeps.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest

from fake_backend import FakeBackendForSchedulerTests
from omnid.daemon.events import Progress, ReasoningDelta, TextDelta
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.scheduler import JobHandle, QueueFull, Scheduler, ShuttingDown
from omnid.daemon.session import Cancelled

WAIT = 10.0  # seconds a condition may take on a busy machine before the test fails (never a sleep)


def make_scheduler(max_queue: int = 4, backend: FakeBackendForSchedulerTests | None = None) -> Scheduler:
    fake = backend or FakeBackendForSchedulerTests()
    return Scheduler(lambda: fake, lambda b: PromptCache(b.info.fingerprint, 1 << 20), max_queue=max_queue)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    s = make_scheduler()
    s.start()
    yield s
    s.stop()


def blocker() -> tuple[threading.Event, threading.Event, Any]:
    """A job that holds the decoder until released: (started, release, job)."""
    started, release = threading.Event(), threading.Event()

    def job(session, emit):
        started.set()
        assert release.wait(WAIT)
        return "released"
    return started, release, job


# -- results and errors --------------------------------------------------------------------------------------


def test_a_job_returns_its_result_and_its_error_is_raised_to_the_submitter(scheduler: Scheduler) -> None:
    assert scheduler.submit(lambda session, emit: session.info.name).result(WAIT) == "fake"

    def failing(session, emit):
        emit(Progress("working", 1, 2))
        raise ValueError("bad input")
    handle = scheduler.submit(failing)
    with pytest.raises(ValueError, match="bad input"):
        handle.result(WAIT)
    events = []
    with pytest.raises(ValueError, match="bad input"):  # events() ends with the same error
        for event in handle.events():
            events.append(event)
    assert events == [Progress("working", 1, 2)]
    # The daemon goes on: the next job runs.
    assert scheduler.submit(lambda session, emit: 42).result(WAIT) == 42


def test_result_times_out_instead_of_hanging(scheduler: Scheduler) -> None:
    started, release, job = blocker()
    handle = scheduler.submit(job)
    assert started.wait(WAIT)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0)
    release.set()
    assert handle.result(WAIT) == "released"


def test_jobs_run_one_at_a_time_in_submission_order(scheduler: Scheduler) -> None:
    started, release, job = blocker()
    order: list[int] = []
    inside = threading.Lock()

    def numbered(i: int):
        def run(session, emit):
            assert inside.acquire(blocking=False), "two jobs on the decoder at once"
            try:
                order.append(i)
            finally:
                inside.release()
        return run
    first = scheduler.submit(job)
    assert started.wait(WAIT)
    handles = [scheduler.submit(numbered(i)) for i in range(3)]
    assert scheduler.busy and scheduler.queue_depth == 3
    release.set()
    first.result(WAIT)
    for h in handles:
        h.result(WAIT)
    assert order == [0, 1, 2]
    assert all(h.queue_ms > 0 for h in handles)


def test_a_full_queue_is_refused_at_once() -> None:
    s = make_scheduler(max_queue=2)
    s.start()
    try:
        started, release, job = blocker()
        running = s.submit(job)
        assert started.wait(WAIT)
        waiting = [s.submit(lambda session, emit: None) for _ in range(2)]
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            s.submit(lambda session, emit: None)
        release.set()
        running.result(WAIT)
        for h in waiting:
            h.result(WAIT)
    finally:
        s.stop()


# -- cancellation and shutdown -------------------------------------------------------------------------------


def test_a_cancelled_job_stops_and_a_cancelled_queued_job_never_runs(scheduler: Scheduler) -> None:
    in_job = threading.Event()

    def long_job(session, emit):
        in_job.set()
        while True:  # a decode loop: checks for cancellation at every token
            session.check_cancelled()
    running = scheduler.submit(long_job)
    ran = threading.Event()
    queued = scheduler.submit(lambda session, emit: ran.set())
    queued.cancel()
    assert in_job.wait(WAIT)
    running.cancel()
    with pytest.raises(Cancelled):
        running.result(WAIT)
    with pytest.raises(Cancelled):
        queued.result(WAIT)
    assert not ran.is_set()
    assert scheduler.submit(lambda session, emit: "next").result(WAIT) == "next"


def test_stop_ends_running_and_queued_jobs_with_shutting_down_and_closes_the_backend() -> None:
    fake = FakeBackendForSchedulerTests()
    s = make_scheduler(backend=fake)
    s.start()
    in_job = threading.Event()

    def long_job(session, emit):
        in_job.set()
        while True:
            session.check_cancelled()
    running = s.submit(long_job)
    queued = s.submit(lambda session, emit: None)
    assert in_job.wait(WAIT)
    s.stop()
    for handle in (running, queued):
        with pytest.raises(ShuttingDown):
            handle.result(WAIT)
    with pytest.raises(ShuttingDown):
        s.submit(lambda session, emit: None)
    assert fake.closed


class _ContendedLock:
    """A lock that tells the test when a second thread is about to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contended = threading.Event()

    def __enter__(self) -> "_ContendedLock":
        if self._lock.locked():
            self.contended.set()
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_submit_racing_stop_never_lands_behind_the_shutdown_sentinel() -> None:
    """The interleaving that used to hang a caller: submit() has checked that the scheduler is not stopping and
    is about to enqueue when stop() runs; stop() drained the queue and put its sentinel first, the job landed
    behind it, the worker ended at the sentinel and nobody ever finished the job. Forced here step by step."""
    s = make_scheduler()
    s.start()
    lock = _ContendedLock()
    s._lock = lock  # type: ignore[assignment]
    entered, release = threading.Event(), threading.Event()
    real_push = s._queue.push

    def push(*args: Any) -> int:  # submit() in the middle of its enqueue
        entered.set()
        assert release.wait(WAIT)
        return real_push(*args)
    s._queue.push = push  # type: ignore[method-assign]
    submitted: list[Any] = []
    submitter = threading.Thread(target=lambda: submitted.append(_submit_or_error(s)))
    submitter.start()
    assert entered.wait(WAIT)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (s.stop(), stopped.set()))
    stopper.start()
    # stop() must wait for the submit under way (it finds the lock taken), not run past it.
    assert lock.contended.wait(WAIT)
    assert not stopped.is_set()
    release.set()
    submitter.join(WAIT)
    stopper.join(WAIT)
    assert stopped.is_set()
    (outcome,) = submitted
    if isinstance(outcome, JobHandle):  # it got in before stop(): it ran or was refused, never left hanging
        try:
            assert outcome.result(WAIT) == "ran"
        except ShuttingDown:
            pass
    else:
        assert isinstance(outcome, ShuttingDown)


def _submit_or_error(s: Scheduler) -> Any:
    try:
        return s.submit(lambda session, emit: "ran")
    except ShuttingDown as exc:
        return exc


def test_jobs_still_queued_when_the_worker_stops_are_finished_by_it() -> None:
    """Whatever is in the queue once the worker sees the scheduler stopping is finished with ShuttingDown, never
    dropped (here it got in past submit's check, as a lost race would leave it)."""
    s = make_scheduler()
    s.start()
    started, release, job = blocker()
    running = s.submit(job)
    assert started.wait(WAIT)
    late = JobHandle(lambda session, emit: "ran", "late")
    with s._lock:
        s._stopping = True
        s._queue.push(late, late.priority, "")
    release.set()
    assert running.result(WAIT) == "released"
    with pytest.raises(ShuttingDown):
        late.result(WAIT)
    s.stop()


# -- delta coalescing ----------------------------------------------------------------------------------------


def test_deltas_are_held_back_at_most_one_interval_and_joined_in_order() -> None:
    handle: JobHandle = JobHandle(lambda session, emit: None, "deltas", delta_interval=3600.0)
    handle.emit(TextDelta("a"))          # the first one goes out at once
    handle.emit(TextDelta("b"))          # within the interval: held
    handle.emit(TextDelta("c"))
    handle.emit(Progress("x", 1, 1))     # any other event releases what was held, before itself
    handle.emit(TextDelta("d"))
    handle.finish("result")              # and so does the end of the job
    assert list(handle.events()) == [TextDelta("abc"), Progress("x", 1, 1), TextDelta("d")]
    assert handle.result() == "result"


def test_deltas_waiting_for_the_reader_are_joined_into_one() -> None:
    handle: JobHandle = JobHandle(lambda session, emit: None, "deltas", delta_interval=0.0)
    for piece in ["he", "ll", "o"]:
        handle.emit(TextDelta(piece))    # interval 0: each is passed on, and all wait for the reader
    handle.emit(Progress("x", 1, 1))
    handle.emit(TextDelta("!"))
    handle.finish()
    assert list(handle.events()) == [TextDelta("hello"), Progress("x", 1, 1), TextDelta("!")]


def test_thinking_and_answer_deltas_are_joined_apart_never_together() -> None:
    for interval in (3600.0, 0.0):  # held back by the decoder's side, or waiting for the reader
        handle: JobHandle = JobHandle(lambda session, emit: None, "deltas", delta_interval=interval)
        for event in [ReasoningDelta("th"), ReasoningDelta("ink"), TextDelta("an"), TextDelta("swer"),
                      ReasoningDelta("again")]:
            handle.emit(event)
        handle.finish()
        joined = list(handle.events())
        assert [type(e) for e in joined][-3:] == [ReasoningDelta, TextDelta, ReasoningDelta], interval
        assert "".join(e.text for e in joined if isinstance(e, ReasoningDelta)) == "thinkagain"
        assert "".join(e.text for e in joined if isinstance(e, TextDelta)) == "answer"


def test_a_reader_gets_deltas_while_the_job_is_still_running(scheduler: Scheduler) -> None:
    """Streaming, not buffering to the end: the reader sees the first delta before the job goes on."""
    seen, go_on = threading.Event(), threading.Event()

    def job(session, emit):
        emit(TextDelta("first"))
        assert go_on.wait(WAIT)
        emit(TextDelta("second"))
        return "done"
    handle = scheduler.submit(job)
    events = handle.events()
    assert next(events) == TextDelta("first")
    seen.set()
    go_on.set()
    assert [e.text for e in events] == ["second"]
    assert handle.result(WAIT) == "done"
