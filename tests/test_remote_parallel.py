"""Several requests at once through --backend remote: the engine batches them, omnid's priorities decide which
jobs get a sequence. Against a real engine: a second omnid with four parallel sequences, through its HTTP
endpoint. What the engine did is read from its own records (Status: decode_steps, sequences_in_use, busy), not
from wall time.

Random weights: assertions are on structure and on equality with the same request alone (greedy), never on
wording.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from remote_engine import kill_all
from test_remote_chat import LONG, Front, http_flags
from omnid.clients.client import text

N = 4
WAIT = 120.0


@pytest.fixture(scope="module", autouse=True)
def no_engine_left() -> Iterator[None]:
    yield
    kill_all()


class Engine:
    """The engine: a second omnid with N sequences (its batching engine decodes them together)."""

    def __init__(self, start_daemon, tmp_path_factory) -> None:
        port, self.token_file, flags = http_flags(tmp_path_factory)
        self.daemon = start_daemon(*flags, "--ctx", "32768", "--parallel", str(N))
        self.url = f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def engine(start_daemon, tmp_path_factory) -> Engine:
    return Engine(start_daemon, tmp_path_factory)


@pytest.fixture(scope="module")
def front(start_daemon, tmp_path_factory, engine: Engine) -> Iterator[Front]:
    """omnid in front of it with --backend remote --parallel N."""
    front = Front(start_daemon, tmp_path_factory, engine.url, "--remote-token-file", str(engine.token_file),
                  "--parallel", str(N))
    yield front
    front.daemon.stop()


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class LongAnswers:
    """N - k LONG answers streaming through the front (k sequences left free), each cancellable."""

    def __init__(self, front: Front, count: int) -> None:
        self.clients = [front.daemon.client() for _ in range(count)]
        self.streams = [c.generate(text(f"tell me a long story, number {i}"), max_tokens=LONG)
                        for i, c in enumerate(self.clients)]
        for stream in self.streams:  # each one's first piece: all are streaming from the engine now
            assert next(iter(stream)).WhichOneof("event") == "delta"

    def cancel(self, i: int) -> None:
        self.streams[i].cancel()

    def close(self) -> None:
        for stream, client in zip(self.streams, self.clients):
            stream.cancel()
            client.close()


def test_status_shows_the_front_s_sequences(front: Front) -> None:
    with front.daemon.client() as client:
        status = client.status()
    assert status.backend == "remote" and status.sequences_total == N and status.sequences_in_use == 0
    assert status.decode_steps == 0  # the engine decodes, not omnid


def test_requests_at_once_go_to_the_engine_together_each_as_alone(front: Front, engine: Engine) -> None:
    """N Generate calls at once: the engine decodes them in shared steps (fewer steps than one after another),
    and each answer is the one the same request gets alone (greedy)."""
    prompts = [f"Question {i}: what comes after the number {i * 7}?" for i in range(N)]

    def ask(prompt: str) -> Any:
        with front.daemon.client() as client:
            return client.ask(text(prompt), max_tokens=16)
    with engine.daemon.client() as e:
        before = e.status().decode_steps
        alone = [ask(p) for p in prompts]
        one_by_one = e.status().decode_steps - before
        start = threading.Barrier(N)

        def at_once(prompt: str) -> Any:
            start.wait(WAIT)
            return ask(prompt)
        before = e.status().decode_steps
        with ThreadPoolExecutor(N) as pool:
            together = list(pool.map(at_once, prompts))
        shared = e.status().decode_steps - before
    assert [a.text for a in together] == [a.text for a in alone]
    assert [a.usage.generated_tokens for a in together] == [a.usage.generated_tokens for a in alone]
    assert sum(a.usage.generated_tokens for a in alone) >= 2 * N
    # one after another, every step decodes one request; at once, the requests share steps
    assert shared <= 0.6 * one_by_one, (shared, one_by_one)


def test_n_long_answers_are_in_flight_on_the_engine_together(front: Front, engine: Engine) -> None:
    answers = LongAnswers(front, N)
    try:
        with front.daemon.client() as client, engine.daemon.client() as e:
            assert client.status().sequences_in_use == N
            assert e.status().sequences_in_use == N  # the engine holds all of them at once
            assert len(e.status().active) == N
    finally:
        answers.close()
    with engine.daemon.client() as e:
        until(lambda: not e.status().busy, "the engine to stop decoding")


def test_a_cancelled_answer_frees_its_sequence_for_the_next_request(front: Front, engine: Engine) -> None:
    """Every sequence holds a LONG answer and a question waits; one answer is cancelled: the question takes its
    sequence and is answered while the other answers go on."""
    answers = LongAnswers(front, N)
    try:
        with front.daemon.client() as client, front.daemon.client() as waiting, engine.daemon.client() as e:
            with ThreadPoolExecutor(1) as pool:
                question = pool.submit(lambda: waiting.ask(text("and now?"), max_tokens=2))
                until(lambda: client.status().queue_interactive == 1, "the question to queue")
                assert not question.done()
                answers.cancel(1)
                assert question.result(WAIT).usage.generated_tokens == 2
            status = client.status()
            assert status.sequences_in_use == N - 1 and status.queue_depth == 0
            assert e.status().sequences_in_use == N - 1  # the engine freed the cancelled one as well
    finally:
        answers.close()
    with engine.daemon.client() as e:
        until(lambda: not e.status().busy, "the engine to stop decoding")


def test_background_work_does_not_get_ahead_of_a_question(front: Front, engine: Engine, tmp_path: Path) -> None:
    """A transcription (background clips) queued before a question: the question gets the sequence that frees
    first, and background work never takes the last free sequence."""
    from audio_fixtures import speech_wav
    from omnid.clients.meetings import MeetingsClient
    speech = speech_wav(tmp_path, 4.0).read_bytes()
    answers = LongAnswers(front, N)
    try:
        with front.daemon.client() as client, front.daemon.client() as meeting, front.daemon.client() as asker:
            with ThreadPoolExecutor(2) as pool:
                transcript = pool.submit(lambda: MeetingsClient.transcript(meeting.transcribe(speech, no_store=True)))
                until(lambda: client.status().queue_background >= 1, "the first clip to queue")
                question = pool.submit(lambda: asker.ask(text("what was said?"), max_tokens=2))
                until(lambda: client.status().queue_interactive == 1, "the question to queue")
                answers.cancel(0)
                assert question.result(WAIT).usage.generated_tokens == 2
                status = client.status()
                assert status.queue_background >= 1 and not transcript.done()  # one free sequence: kept back
                answers.cancel(2)  # two free: background runs
                assert transcript.result(WAIT).segments
    finally:
        answers.close()
    with engine.daemon.client() as e:
        until(lambda: not e.status().busy, "the engine to stop decoding")
