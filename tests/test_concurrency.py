"""Parallel sequences on the real hybrid test model, through the daemon's Scheduler (batching engine, proxies,
priorities): N greedy streams at once give the tokens each gives alone; a cancelled stream frees its sequence;
a background transcription delays a question's first token by at most one prefill chunk. What the engine did
is read from its own step records, never from wall time.

The backend is the multi-sequence llama.cpp backend: one context, N sequences, decode_batch one llama_decode.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
import pytest

from _common import greedy_step

from omnid.daemon.priorities import Priority
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.scheduler import Scheduler
from omnid.daemon.session import Cancelled, DecoderSession
from omnid.models.base import Backend, TextSegment
from omnid.models.gguf_test_model import TestModelPaths
from omnid.models.llama_cpp_backend import LlamaCppBackend

WAIT = 120.0
N = 4
#: Logits of a sequence decoded in a batch vs alone, at most (seqs-backend measured <= 1.7e-2 on the hybrid).
LOGIT_TOLERANCE = 0.05


def multi_sequence(paths: TestModelPaths, n: int, n_batch: int = 512) -> Backend:
    return LlamaCppBackend(paths.text, None, n_ctx=2048, n_threads=1, n_batch=n_batch, n_sequences=n)


def scheduler_on(backend: Backend) -> Scheduler:
    s = Scheduler(lambda: backend, lambda b: PromptCache(b.info.fingerprint, 64 << 20))
    s.start()
    return s


@pytest.fixture(scope="module")
def parallel(test_model: TestModelPaths) -> Iterator[Scheduler]:
    s = scheduler_on(multi_sequence(test_model, N))
    yield s
    s.stop()


def greedy(prompt: str, n_tokens: int, gate: threading.Barrier | None = None) -> Any:
    """A job: prefill, (wait at the gate,) then n_tokens greedy token ids (end of generation included)."""
    def job(session: DecoderSession, emit: Any) -> list[int]:
        session.prefill(session.build_prompt([TextSegment(prompt)]), save=False)
        if gate is not None:
            gate.wait(WAIT)
        tokens: list[int] = []
        for _ in range(n_tokens):
            session.check_cancelled()
            token = int(np.argmax(session.backend.logits()))
            tokens.append(token)
            if session.backend.is_end_of_generation(token):
                break
            session.append_generated(token)
        return tokens
    return job


def test_streams_at_once_give_the_tokens_each_gives_alone(parallel: Scheduler) -> None:
    prompts = [f"Stream {i}: tell me about the number {i * 7}." for i in range(N)]
    alone = [parallel.submit(greedy(p, 24)).result(WAIT) for p in prompts]
    assert all(len(tokens) > 1 for tokens in alone)
    gate = threading.Barrier(N)
    handles = [parallel.submit(greedy(p, 24, gate), client=f"client-{i}") for i, p in enumerate(prompts)]
    together = [h.result(WAIT) for h in handles]
    assert together == alone
    assert {h.sequence for h in handles} == set(range(N))
    engine = parallel.engine
    assert engine is not None
    decoded = [r for r in engine.records() if r.index >= min(h.admitted_step for h in handles)]
    assert max(len(r.decoded) for r in decoded) >= 2  # streams shared decode steps
    assert parallel.batch_stats()[2] == engine.steps_total


def forced(prompt: str, tokens: list[int], gate: threading.Barrier | None = None) -> Any:
    """A job: prefill, (wait at the gate,) then append the given tokens one by one; the logits before each."""
    def job(session: DecoderSession, emit: Any) -> list[np.ndarray]:
        session.prefill(session.build_prompt([TextSegment(prompt)]), save=False)
        if gate is not None:
            gate.wait(WAIT)
        seen = []
        for token in tokens:
            seen.append(session.backend.logits())
            session.append_generated(token)
        return seen
    return job


def test_batched_streams_see_the_logits_they_see_alone_within_the_batch_tolerance(parallel: Scheduler) -> None:
    """Token by token on the same path as alone (teacher forcing), so a near-tie that goes the other way in a
    batch cannot hide a mixed-up sequence: each stream's logits stay within LOGIT_TOLERANCE of its own solo run,
    and far from every other stream's."""
    prompts = [f"Forced {i}: the colour of {i * 13} apples." for i in range(N)]
    paths = [parallel.submit(greedy(p, 40)).result(WAIT) for p in prompts]
    alone = [parallel.submit(forced(p, t)).result(WAIT) for p, t in zip(prompts, paths)]
    gate = threading.Barrier(N)
    handles = [parallel.submit(forced(p, t, gate)) for p, t in zip(prompts, paths)]
    together = [h.result(WAIT) for h in handles]
    for i in range(N):
        diff = max(float(np.abs(a - b).max()) for a, b in zip(alone[i], together[i]))
        assert diff <= LOGIT_TOLERANCE, (i, diff)
        others = [float(np.abs(alone[j][0] - together[i][0]).max()) for j in range(N) if j != i]
        assert min(others) > 10 * LOGIT_TOLERANCE


def test_a_cancelled_stream_frees_its_sequence_within_one_step(parallel: Scheduler) -> None:
    going = threading.Event()

    def endless(session: DecoderSession, emit: Any) -> None:
        session.prefill(session.build_prompt([TextSegment("Count forever.")]), save=False)
        going.set()
        while True:
            if session.free_tokens < 2:
                session.prefill(session.build_prompt([TextSegment("Again.")]), save=False)
            greedy_step(session)
    stream = parallel.submit(endless)
    assert going.wait(WAIT)
    engine = parallel.engine
    assert engine is not None
    at = engine.steps_total
    stream.cancel()
    with pytest.raises(Cancelled):
        stream.result(WAIT)
    touched = [r for r in engine.records() if r.index >= at and
               (stream.sequence in r.decoded or (r.prefill is not None and r.prefill[0] == stream.sequence))]
    assert len(touched) <= 1
    assert parallel.sequences_in_use == 0
    assert len(parallel.submit(greedy("After the cancel.", 4)).result(WAIT)) >= 1


def test_a_background_transcription_delays_a_question_by_at_most_one_prefill_chunk(
        test_model: TestModelPaths) -> None:
    chunk = 64
    s = scheduler_on(multi_sequence(test_model, 2, n_batch=chunk))
    try:
        engine = s.engine
        assert engine is not None
        transcript = " ".join(f"speaker {i % 3} said item {i} of the agenda." for i in range(50))
        clip = s.submit(greedy(transcript, 4), "meeting-clip")
        while sum(r.prefill is not None for r in engine.records()) < 2:  # the transcription's prefill is under way
            assert not clip.done()
        question = s.submit(greedy("What was decided?", 4))
        assert len(question.result(WAIT)) >= 1
        clip.result(WAIT)
        steps = [r for r in engine.records() if r.index >= question.admitted_step]
        mine = [r.index for r in steps if r.prefill is not None and r.prefill[0] == question.sequence]
        background_first = [r for r in steps if r.index < mine[0] and r.prefill is not None
                            and r.prefill[2] == Priority.BACKGROUND]
        assert len(background_first) <= 1
        assert mine == list(range(mine[0], mine[-1] + 1))  # no background chunk between its own chunks
        later = [r for r in steps if r.index > mine[-1] and r.prefill is not None and r.prefill[0] == clip.sequence]
        assert later  # and the transcription went on after it
        assert all(r.tokens <= chunk for r in engine.records())
    finally:
        s.stop()
