"""Parallel sequences in the scheduler: the batching engine, priorities, the per-client cap, cancellation.

On FakeBackendForSchedulerTests with several sequences (no model: fast). What the engine did is read from its
own step records (BatchEngine.steps) and the fake's record of every decode_batch, never from wall time.
The same on the real hybrid test model: tests/test_concurrency.py.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Mapping, Sequence

import pytest

from fake_backend import FakeBackendForSchedulerTests
from omnid.daemon.batch_engine import STARVATION_STEPS
from omnid.daemon.priorities import PASS_LIMIT, Priority, QueueFull
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.scheduler import JobHandle, Scheduler, ShuttingDown
from omnid.daemon.session import Cancelled
from omnid.models.base import TextSegment

WAIT = 10.0
REPLY = bytes(range(97, 123)) * 8  # 208 reply tokens: long enough for the streams to overlap


def make(n: int = 4, max_queue: int = 8, gather: float = 0.05, **fake: Any) -> tuple[Scheduler,
                                                                                     FakeBackendForSchedulerTests]:
    backend = FakeBackendForSchedulerTests(reply=fake.pop("reply", REPLY), n_sequences=n, **fake)
    s = Scheduler(lambda: backend, lambda b: PromptCache(b.info.fingerprint, 1 << 20), max_queue=max_queue,
                  gather_seconds=gather)
    s.start()
    return s, backend


@pytest.fixture(autouse=True, params=[False, True], ids=["owner-thread-steps", "job-threads-lead"])
def leads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test twice: the engine stepped by the owner thread only (a thread-affine backend: mlx), and by the
    waiting job threads themselves (Backend.any_thread: llama.cpp)."""
    monkeypatch.setattr(FakeBackendForSchedulerTests, "any_thread", property(lambda self: request.param))
    return request.param


@pytest.fixture
def four() -> Iterator[tuple[Scheduler, FakeBackendForSchedulerTests]]:
    s, backend = make(4)
    yield s, backend
    s.stop()


def answer(text: str, max_tokens: int = 1000, gate: threading.Barrier | None = None) -> Any:
    """A job: prefill a question, (wait at the gate,) generate; returns the text."""
    def job(session, emit):
        session.prefill(session.build_prompt([TextSegment(text)]))
        if gate is not None:
            gate.wait(WAIT)
        return session.generate(max_tokens, SamplingParams()).text
    return job


def blocker() -> tuple[threading.Event, threading.Event, Any]:
    started, release = threading.Event(), threading.Event()

    def job(session, emit):
        started.set()
        assert release.wait(WAIT)
        return "released"
    return started, release, job


def test_streams_at_once_give_what_each_gives_alone_in_shared_decode_steps(four) -> None:
    s, backend = four
    alone = s.submit(answer("alone")).result(WAIT)
    assert alone == REPLY.decode()
    gate = threading.Barrier(4)
    handles = [s.submit(answer(f"question {i}", gate=gate)) for i in range(4)]
    assert [h.result(WAIT) for h in handles] == [alone] * 4
    assert {h.sequence for h in handles} == {0, 1, 2, 3}
    assert max(len(b) for b in backend.batches) == 4  # every stream's next token in one decode_batch
    sequences, tokens, steps = s.batch_stats()
    assert steps == len(backend.batches) and sequences > 1 and tokens >= sequences
    assert s.sequences_in_use == 0 and not s.busy


def test_a_long_prefill_is_cut_into_chunks_between_the_other_streams_decode_steps() -> None:
    s, backend = make(2, batch_capacity=32)
    try:
        s.submit(answer("warm")).result(WAIT)  # the reply's token pieces are known: a decode step is one hand-off
        started, go = threading.Event(), threading.Event()

        def streaming(session, emit):
            session.prefill(session.build_prompt([TextSegment("short")]))
            started.set()
            assert go.wait(WAIT)
            return session.generate(1000, SamplingParams()).text
        stream = s.submit(streaming)
        assert started.wait(WAIT)
        engine = s.engine
        assert engine is not None

        def on_batch(work: Mapping[int, Sequence[int]]) -> None:  # the first chunk waits for the stream to go
            go.set()
            while stream.sequence not in engine._appends:
                pass
            backend.on_batch = None
        backend.on_batch = on_batch
        first_step = engine.steps_total  # the warm job's steps (maybe on the same sequence) came before
        long = s.submit(answer("x" * 600, max_tokens=1))
        assert long.result(WAIT) == REPLY[:1].decode()
        assert stream.result(WAIT) == REPLY.decode()
        chunks = [r for r in engine.records()
                  if r.index >= first_step and r.prefill is not None and r.prefill[0] == long.sequence]
        assert len(chunks) >= 600 // 32
        assert all(r.tokens <= 32 for r in engine.records())
        # While the long prompt was evaluated, the stream went on decoding in the same steps: every chunk but the
        # first (made up before the stream's first token) carried the stream's next token.
        assert [stream.sequence in r.decoded for r in chunks[1:]] == [True] * (len(chunks) - 1)
    finally:
        s.stop()


def test_an_interactive_prefill_waits_for_at_most_one_background_chunk_and_background_goes_on() -> None:
    s, backend = make(3, batch_capacity=16)
    try:
        ask = threading.Event()

        def question_job(session, emit):
            assert ask.wait(WAIT)
            return answer("what now?", max_tokens=4)(session, emit)
        question = s.submit(question_job)
        clip: JobHandle | None = None

        def waits(seq: int) -> bool:
            with s.engine._cond:  # type: ignore[union-attr]
                return any(c.seq == seq for c in s.engine._calls)  # type: ignore[union-attr]

        def on_batch(work: Mapping[int, Sequence[int]]) -> None:
            """In the middle of the background prefill, the question comes: this chunk is the one it waits for."""
            engine = s.engine
            assert engine is not None and clip is not None
            if clip.sequence in work and len(engine.records()) > 3 and not ask.is_set():
                ask.set()  # the question's first request (a tokenization) waits for this chunk
                while not waits(question.sequence):
                    pass
        backend.on_batch = on_batch
        clip = s.submit(answer("y" * 800, max_tokens=1), "meeting-clip")
        assert question.result(WAIT) == REPLY[:4].decode()
        assert clip.result(WAIT) == REPLY[:1].decode()
        assert s.engine is not None
        steps = s.engine.records()
        waited = next(i for i, r in enumerate(steps) if question.sequence in r.waiting_prefills)
        mine = [i for i, r in enumerate(steps) if r.prefill and r.prefill[0] == question.sequence]
        assert steps[waited - 1].prefill is not None and steps[waited - 1].prefill[0] == clip.sequence
        assert mine[0] == waited  # chosen in the first step it waited in: no second background chunk first
        assert mine == list(range(mine[0], mine[-1] + 1))  # and none in between its chunks
        after = [r for r in steps[mine[-1] + 1:] if r.prefill and r.prefill[0] == clip.sequence]
        assert after and after[0].prefill is not None and after[0].prefill[2] == Priority.BACKGROUND
    finally:
        s.stop()


def test_on_a_slow_machine_a_chunk_beside_decoding_streams_is_what_the_measured_rate_evaluates_in_time() -> None:
    s, backend = make(3, batch_capacity=512)  # 3: background work leaves the last free sequence to interactive
    try:
        s.submit(answer("warm")).result(WAIT)
        engine = s.engine
        assert engine is not None
        engine.chunk_seconds = 0.01  # at 0.2 ms a token (below): chunks of about 50 tokens beside a stream
        backend.on_batch = lambda work: time.sleep(0.0002 * sum(len(t) for t in work.values()))
        first_step = engine.steps_total
        clip = s.submit(answer("y" * 1500, max_tokens=1), "meeting-clip")
        assert clip.result(WAIT) == REPLY[:1].decode()  # alone: whole batches, and the pace is measured
        assert 1500 < engine.prefill_rate <= 5000
        alone = [r.prefill[1] for r in engine.records() if r.index >= first_step and r.prefill is not None]
        assert max(alone) == 512
        first_step = engine.steps_total
        stream = s.submit(answer("go on"))
        clip = s.submit(answer("z" * 1500, max_tokens=1), "meeting-clip")
        assert clip.result(WAIT) == REPLY[:1].decode()
        beside = [r.prefill[1] for r in engine.records()
                  if r.index >= first_step and r.prefill is not None and r.prefill[0] == clip.sequence and r.decoded]
        assert len(beside) > 1500 // 100 and max(beside) <= 100, beside  # about 50 (sleep only overshoots)
        assert stream.result(WAIT) == REPLY.decode()
    finally:
        s.stop()


def test_a_background_prefill_passed_over_long_enough_gets_a_chunk_between_interactive_ones() -> None:
    s, backend = make(3, batch_capacity=8)
    try:
        both = threading.Barrier(2)

        def prefill_at_once(text: str) -> Any:
            def job(session, emit):
                both.wait(WAIT)
                return answer(text, max_tokens=1)(session, emit)
            return job
        clip = s.submit(prefill_at_once("y" * 200), "meeting-clip")
        question = s.submit(prefill_at_once("x" * 600))
        question.result(WAIT)
        clip.result(WAIT)
        assert s.engine is not None
        steps = [r for r in s.engine.records() if r.prefill is not None]
        mine = [i for i, r in enumerate(steps) if r.prefill is not None and r.prefill[0] == question.sequence]
        between = [r for r in steps[mine[0]:mine[-1]] if r.prefill is not None and r.prefill[0] == clip.sequence]
        assert between  # the background prefill got chunks while the long interactive one went on
        runs, run = [], 0
        for r in steps[mine[0]:mine[-1] + 1]:
            waiting = clip.sequence in r.waiting_prefills
            run = run + 1 if waiting and r.prefill is not None and r.prefill[0] == question.sequence else 0
            runs.append(run)
        assert max(runs) <= STARVATION_STEPS + 1
    finally:
        s.stop()


def test_a_cancelled_stream_frees_its_sequence_within_one_step(four) -> None:
    s, backend = four
    going = threading.Event()

    def endless(session, emit):
        session.prefill(session.build_prompt([TextSegment("go")]))
        going.set()
        while True:
            session.generate(100, SamplingParams())
            session.prefill(session.build_prompt([TextSegment("again")]))
    other = s.submit(answer("other"))
    stream = s.submit(endless)
    assert going.wait(WAIT)
    assert s.engine is not None
    at = s.engine.steps_total
    stream.cancel()
    with pytest.raises(Cancelled):
        stream.result(WAIT)
    later = [r for r in s.engine.records() if r.index >= at and (stream.sequence in r.decoded or
                                                               (r.prefill and r.prefill[0] == stream.sequence))]
    assert len(later) <= 1
    assert other.result(WAIT) == REPLY.decode()
    assert s.sequences_in_use == 0


def test_a_failing_sequence_in_a_decode_step_fails_only_its_own_job(four) -> None:
    s, backend = four
    gate = threading.Barrier(2)
    doomed, fine = s.submit(answer("doomed", gate=gate)), s.submit(answer("fine", gate=gate))
    while doomed.sequence < 0:
        pass
    bad = doomed.sequence

    def on_batch(work: Mapping[int, Sequence[int]]) -> None:
        if bad in work and backend.batches and len(work) == 2:
            raise RuntimeError("the decoder refused this sequence")
        if bad in work and len(work) == 1 and len(backend.batches) > 8:
            raise RuntimeError("the decoder refused this sequence")
    backend.on_batch = on_batch
    assert fine.result(WAIT) == REPLY.decode()
    with pytest.raises(RuntimeError, match="refused"):
        doomed.result(WAIT)
    assert s.submit(answer("next")).result(WAIT) == REPLY.decode()


# -- admission: priorities, limits, the per-client cap ---------------------------------------------------------


def test_interactive_jobs_pass_background_ones_but_background_is_never_starved() -> None:
    s, _ = make(1, max_queue=16)
    try:
        started, release, job = blocker()
        first = s.submit(job)
        assert started.wait(WAIT)
        order: list[str] = []

        def named(tag: str) -> Any:
            return lambda session, emit: order.append(tag)
        background = s.submit(named("clip"), "meeting-clip")
        questions = [s.submit(named(f"q{i}"), "generate") for i in range(PASS_LIMIT + 2)]
        release.set()
        for h in [first, background, *questions]:
            h.result(WAIT)
        # Interactive first, up to the age bound; then the background job, then the rest.
        assert order == [f"q{i}" for i in range(PASS_LIMIT)] + ["clip", f"q{PASS_LIMIT}", f"q{PASS_LIMIT + 1}"]
        assert background.priority == Priority.BACKGROUND
    finally:
        s.stop()


def test_each_class_has_its_own_queue_limit() -> None:
    s, _ = make(1, max_queue=2)
    try:
        started, release, job = blocker()
        running = s.submit(job)
        assert started.wait(WAIT)
        waiting = [s.submit(lambda session, emit: None) for _ in range(2)]
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            s.submit(lambda session, emit: None)
        clips = [s.submit(lambda session, emit: None, "meeting-clip") for _ in range(2)]  # background has room
        with pytest.raises(QueueFull, match="2 background requests"):
            s.submit(lambda session, emit: None, "screen-frame")
        assert (s.queue_depth_of(Priority.INTERACTIVE), s.queue_depth_of(Priority.BACKGROUND)) == (2, 2)
        release.set()
        for h in [running, *waiting, *clips]:
            h.result(WAIT)
    finally:
        s.stop()


def test_background_work_leaves_the_last_free_sequence_to_interactive_work() -> None:
    s, _ = make(2)
    try:
        clip_started, clip_release, clip = blocker()
        frame_started, frame_release, frame = blocker()
        clips = s.submit(clip, "meeting-clip")
        frames = s.submit(frame, "screen-frame")
        assert clip_started.wait(WAIT)
        assert s.jobs()[1] == [frames] and not frame_started.is_set()
        assert s.submit(lambda session, emit: "at once").result(WAIT) == "at once"
        clip_release.set()
        assert frame_started.wait(WAIT)
        frame_release.set()
        assert clips.result(WAIT) == frames.result(WAIT) == "released"
    finally:
        s.stop()


def test_a_client_holding_its_share_waits_behind_another_clients_job() -> None:
    s, _ = make(2)
    try:
        a1_started, a1_release, a1 = blocker()
        a2_started, a2_release, a2 = blocker()
        h1, h2 = s.submit(a1, client="a"), s.submit(a2, client="a")  # alone: the client gets both sequences
        assert a1_started.wait(WAIT) and a2_started.wait(WAIT)
        order: list[str] = []
        h3 = s.submit(lambda session, emit: order.append("a"), client="a")
        h4 = s.submit(lambda session, emit: order.append("b"), client="b")
        a1_release.set()
        # b first, though a's job came earlier (then a's may take the sequence b's leaves: nobody else waits)
        assert h4.result(WAIT) is None and order[0] == "b"
        a2_release.set()
        for h in (h1, h2, h3):
            h.result(WAIT)
        assert order == ["b", "a"]
    finally:
        s.stop()


# -- lifetime --------------------------------------------------------------------------------------------------


def test_stop_ends_every_running_stream_and_closes_the_backend() -> None:
    s, backend = make(4)
    going = threading.Barrier(5)

    def endless(session, emit):
        session.prefill(session.build_prompt([TextSegment("go")]))
        going.wait(WAIT)
        while True:
            session.generate(50, SamplingParams())
            session.prefill(session.build_prompt([TextSegment("again")]))
    handles: list[JobHandle] = [s.submit(endless) for _ in range(4)]
    going.wait(WAIT)
    s.stop()
    for h in handles:
        with pytest.raises(ShuttingDown):
            h.result(WAIT)
    assert backend.closed


def test_unload_waits_for_the_running_streams_and_the_next_job_loads_again() -> None:
    loads: list[FakeBackendForSchedulerTests] = []

    def load() -> FakeBackendForSchedulerTests:
        loads.append(FakeBackendForSchedulerTests(reply=b"ok", n_sequences=2))
        return loads[-1]
    s = Scheduler(load, lambda b: PromptCache(b.info.fingerprint, 1 << 20))
    s.start()
    try:
        started, release, job = blocker()
        running = s.submit(job)
        assert started.wait(WAIT)
        unloaded: list[bool] = []
        unloader = threading.Thread(target=lambda: unloaded.append(s.unload(WAIT)))
        unloader.start()
        release.set()
        unloader.join(WAIT)
        assert running.result(WAIT) == "released" and unloaded == [True] and not s.loaded
        assert loads[0].closed
        assert s.submit(answer("again")).result(WAIT) == "ok"
        assert len(loads) == 2 and s.n_sequences == 2
    finally:
        s.stop()


def test_empty_sequence_empties_the_callers_and_every_idle_sequence(four) -> None:
    s, backend = four
    for text in ("one", "two"):
        s.submit(answer(text)).result(WAIT)

    def forget(session, emit):
        s.empty_sequence()
        return session.backend.n_tokens
    assert s.submit(forget).result(WAIT) == 0
    for seq in range(4):
        backend.select(seq)
        assert backend.n_tokens == 0
    assert all(len(live.chain) == 0 for live in s._lives)


def test_a_job_moves_to_the_free_sequence_whose_live_chain_it_continues() -> None:
    s, _ = make(2, reply=b"an answer")

    def first(session, emit):
        session.prefill(session.text_prompt("a long shared beginning"))
        return session.generate(100, SamplingParams()).text

    def follow_up(session, emit):
        return session.prefill(session.text_prompt("a long shared beginning" + said + ", and then?"))
    try:
        one = s.submit(first, client="a")
        said = one.result(WAIT)
        other = s.submit(follow_up, client="b")  # another client: its first pick is the other sequence
        stats = other.result(WAIT)
        assert other.sequence == one.sequence
        assert stats.reused_from == "live" and stats.cached_tokens == len("a long shared beginning" + said)
    finally:
        s.stop()


def test_idle_unload_frees_a_multi_sequence_model_and_the_next_job_loads_it_again() -> None:
    loads: list[FakeBackendForSchedulerTests] = []

    def load() -> FakeBackendForSchedulerTests:
        loads.append(FakeBackendForSchedulerTests(reply=b"ok", n_sequences=3))
        return loads[-1]
    s = Scheduler(load, lambda b: PromptCache(b.info.fingerprint, 1 << 20), idle_unload_seconds=0.05)
    s.start()
    try:
        assert s.submit(answer("one")).result(WAIT) == "ok"
        unloaded = threading.Event()
        while s.loaded:
            unloaded.wait(0.01)
        assert loads[0].closed and s.engine is None
        assert s.submit(answer("two")).result(WAIT) == "ok" and len(loads) == 2 and s.engine is not None
    finally:
        s.stop()
