"""Parallel sequences: aggregate decode speed with 1, 2, 4, 8 clients, and a question's TTFT under background load.

One run, side by side, through the daemon's own Scheduler (batching engine, proxies, priorities) in this process:

  * the same one client on a one-sequence backend (the worker thread runs it directly: what the engine's
    hand-offs cost);
  * aggregate decode tokens/s of C concurrent clients (C = 1, 2, 4, 8), each decoding --tokens tokens after a
    short prompt of its own, and the ratio to one client (goals on the tiny hybrid model: 4 >= 3x, 8 >= 5x);
  * the ceiling no scheduler can pass: Backend.decode_batch of C sequences' next tokens called back to back on
    the backend itself (C x the time of one sequence's step / the time of C's). Batching pays only where a step
    of C tokens costs little more than one (memory-bound decoding: a real model on a GPU); where it costs C
    times as much (the tiny model on a CPU core is compute-bound), the aggregate cannot grow with C;
  * a question's time to first token idle, and while a long transcription (a background "meeting-clip" job:
    --clip-words of transcript-like text prefilled, then a short answer, clip after clip) and the screen watcher
    (a background "screen-frame" job, frame after frame) run; the ratio (goal: <= 2x idle);
  * a decoding stream's longest gap between two tokens while a background clip is prefilled beside it, with the
    engine's prefill chunks whole (the batch capacity) and cut to what the measured rate evaluates in
    --chunk-seconds (the daemon's way: daemon/batch_engine.py CHUNK_SECONDS).

The transcription is text of a clip's size, not audio: the tiny test model's audio encoder turns noise into a
few hundred tokens, and what loads the decoder is the same prefill either way.

    python bench/concurrency.py                       # the tiny hybrid test model (written to a temp folder)
    python bench/concurrency.py --model M.gguf [--parallel 8]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime, add_model_flags, greedy_step, test_model_args  # noqa: E402

from omnid.daemon.batch_engine import CHUNK_SECONDS  # noqa: E402
from omnid.daemon.prompt_cache import PromptCache  # noqa: E402
from omnid.daemon.sampling import SamplingParams  # noqa: E402
from omnid.daemon.scheduler import Scheduler  # noqa: E402
from omnid.daemon.session import DecoderSession  # noqa: E402
from omnid.models.base import Backend, TextSegment  # noqa: E402
from omnid.models.llama_cpp_backend import LlamaCppBackend  # noqa: E402

WORDS = ("the meeting went on about the budget and the plan for the next quarter while someone took notes "
         "and another asked about the schedule ").split()


def words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def decode_job(prompt: str, n_tokens: int, out: list[int]) -> Callable[[DecoderSession, Any], None]:
    """Prefill a prompt, then decode exactly n_tokens greedy tokens."""
    def job(session: DecoderSession, emit: Any) -> None:
        session.prefill(session.build_prompt([TextSegment(prompt)]), save=False)
        for _ in range(n_tokens):
            out.append(greedy_step(session))
    return job


def aggregate(scheduler: Scheduler, clients: int, n_tokens: int, seed: int) -> float:
    """Decode tokens/s of `clients` concurrent clients, all tokens over the wall time of the whole batch."""
    outs: list[list[int]] = [[] for _ in range(clients)]
    t0 = time.perf_counter()
    handles = [scheduler.submit(decode_job(f"{i} {words(12, seed + i)}", n_tokens, outs[i]), "generate",
                                client=f"client-{i}") for i in range(clients)]
    for h in handles:
        h.result(600)
    return sum(len(o) for o in outs) / (time.perf_counter() - t0)


def step_seconds(backend: Backend, sequences: int, steps: int) -> float:
    """Seconds one decode_batch of `sequences` sequences' next tokens takes on the backend alone (greedy tokens
    fed back, as a generating sequence does; each sequence first holds a short prompt of its own)."""
    for seq in range(sequences):
        backend.select(seq)
        backend.reset()
        backend.append_tokens(backend.tokenize(TextSegment(f"{seq} {words(12, seq)}")))
    last = {seq: int(np.argmax(backend.logits())) for seq in range(sequences)}
    t0 = time.perf_counter()
    for _ in range(steps):
        out = backend.decode_batch({seq: [token] for seq, token in last.items()})
        last = {seq: int(np.argmax(logits)) for seq, logits in out.items()}
    return (time.perf_counter() - t0) / steps


def ttft(scheduler: Scheduler, seed: int) -> float:
    """Milliseconds from submitting a question to its first token."""
    first: list[float] = []

    def question(session: DecoderSession, emit: Any) -> None:
        session.prefill(session.build_prompt([TextSegment(f"Question {seed}: {words(24, seed)}?")]), save=False)
        session.generate(2, SamplingParams(), lambda _: first or first.append(time.perf_counter()))
        first or first.append(time.perf_counter())
    t0 = time.perf_counter()
    scheduler.submit(question, "generate", client="menubar").result(600)
    return (first[0] - t0) * 1000


def longest_gap(scheduler: Scheduler, clip_words: int, seed: int) -> float:
    """Milliseconds of the longest wait between a decoding stream's tokens while a background clip of clip_words
    words is prefilled beside it (the stream goes on until the clip is done)."""
    stamps: list[float] = []
    clip_done = threading.Event()

    def stream(session: DecoderSession, emit: Any) -> None:
        session.prefill(session.build_prompt([TextSegment(f"{seed} {words(12, seed)}")]), save=False)
        while not clip_done.is_set():
            greedy_step(session)
            stamps.append(time.perf_counter())

    def clip(session: DecoderSession, emit: Any) -> None:
        session.prefill(session.build_prompt([TextSegment(words(clip_words, 5000 + seed))]), save=False)
    streaming = scheduler.submit(stream, "generate", client="stream")
    while len(stamps) < 2:
        time.sleep(0.001)
    scheduler.submit(clip, "meeting-clip", client="meeting").result(600)
    clip_done.set()
    streaming.result(600)
    return float(np.max(np.diff(stamps))) * 1000


class Background:
    """A long transcription and the screen watcher, submitted clip after clip and frame after frame."""

    def __init__(self, scheduler: Scheduler, clip_words: int) -> None:
        self._stop = threading.Event()
        self.clips = self.frames = 0
        self._threads = [
            threading.Thread(target=self._loop, args=(scheduler, "meeting-clip", clip_words, "clips"), daemon=True),
            threading.Thread(target=self._loop, args=(scheduler, "screen-frame", 96, "frames"), daemon=True)]
        for t in self._threads:
            t.start()

    def _loop(self, scheduler: Scheduler, name: str, n_words: int, counter: str) -> None:
        i = 0
        while not self._stop.is_set():
            def work(session: DecoderSession, emit: Any, i: int = i) -> None:
                session.prefill(session.build_prompt([TextSegment(words(n_words, 1000 + i))]), save=False)
                session.generate(16, SamplingParams())
            scheduler.submit(work, name, client=name).result(600)
            setattr(self, counter, getattr(self, counter) + 1)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(parser)
    parser.add_argument("--parallel", type=int, default=8, help="sequences the backend holds")
    parser.add_argument("--tokens", type=int, default=128, help="tokens each client decodes")
    parser.add_argument("--clip-words", type=int, default=900, help="words of transcript text per clip (~3.4k tokens)")
    parser.add_argument("--questions", type=int, default=5, help="questions timed idle and under load")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                        help="the engine's prefill chunk time, against whole batches (default: the daemon's)")
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp:
        model = test_model_args(Path(tmp), args.model, args.mmproj, args.backend, args.decoder)

        def load() -> Backend:
            return LlamaCppBackend(model["model"], None, n_ctx=args.ctx, n_threads=args.threads,
                                   n_sequences=args.parallel)
        print(stolen.describe())
        alone = load()
        ceiling = {c: step_seconds(alone, c, args.tokens) for c in (1, 2, 4, 8) if c <= alone.n_sequences}
        alone.close()
        del alone
        gc.collect()
        gc.freeze()  # as the daemon does once it is ready (daemon/server.py)
        direct = Scheduler(lambda: LlamaCppBackend(model["model"], None, n_ctx=args.ctx, n_threads=args.threads),
                           lambda b: PromptCache(b.info.fingerprint, 64 << 20))
        direct.start()
        try:
            aggregate(direct, 1, 8, 0)  # warm
            one_sequence = aggregate(direct, 1, args.tokens, 10)
        finally:
            direct.stop()
        scheduler = Scheduler(load, lambda b: PromptCache(b.info.fingerprint, 64 << 20))
        scheduler.start()
        try:
            print(f"model {Path(model['model']).name}: {scheduler.n_sequences} sequences, "
                  f"{args.tokens} tokens a client, {args.threads} threads")
            aggregate(scheduler, 1, 8, 0)  # warm
            rates = {c: aggregate(scheduler, c, args.tokens, 10 * c) for c in (1, 2, 4, 8)
                     if c <= scheduler.n_sequences}
            print("clients   aggregate decode tokens/s   ratio to 1 client   ceiling (decode_batch alone)")
            for c, rate in rates.items():
                most = c * ceiling[1] / ceiling[c]
                print(f"{c:7d}   {rate:27.1f}   {rate / rates[1]:17.2f}x   {most:5.2f}x "
                      f"({ceiling[c] * 1e6:.0f} us a step of {c})")
            print(f"(one client on a one-sequence backend, no engine: {one_sequence:.1f} tokens/s; through the engine "
                  f"{rates[1] / one_sequence:.2f}x that)")
            engine = scheduler.engine
            assert engine is not None
            idle = [ttft(scheduler, 100 + i) for i in range(args.questions)]
            background = Background(scheduler, args.clip_words)
            time.sleep(0.5)
            loaded = [ttft(scheduler, 200 + i) for i in range(args.questions)]
            background.stop()
            steps = engine.records()
            print(f"question TTFT idle        {statistics.median(idle):8.1f} ms (median of {len(idle)})")
            print(f"question TTFT under load  {statistics.median(loaded):8.1f} ms "
                  f"({background.clips} clips of {args.clip_words} words, {background.frames} screen frames)")
            print(f"ratio                     {statistics.median(loaded) / statistics.median(idle):8.2f}x")
            gaps: dict[str, list[float]] = {"whole batches": [], "rate-cut chunks": []}
            for i in range(3):  # the two chunk policies take turns
                for j, (name, seconds) in enumerate((("whole batches", float("inf")),
                                                     ("rate-cut chunks", args.chunk_seconds))):
                    engine.chunk_seconds = seconds
                    gaps[name].append(longest_gap(scheduler, args.clip_words, 300 + 2 * i + j))
            engine.chunk_seconds = args.chunk_seconds
            print(f"a stream's longest gap between tokens while a clip of {args.clip_words} words is prefilled "
                  f"beside it (median of 3; the measured rate {engine.prefill_rate:.0f} tokens/s):")
            for name, times in gaps.items():
                print(f"  {name:15} {statistics.median(times):8.1f} ms")
            whole, cut = (statistics.median(gaps[name]) for name in ("whole batches", "rate-cut chunks"))
            print(f"  ratio           {whole / cut:8.2f}x")
            if steps:
                biggest = max(r.tokens for r in steps)
                print(f"engine: {len(steps)} recent steps, {statistics.mean(r.tokens for r in steps):.1f} tokens and "
                      f"{statistics.mean(len(r.decoded) for r in steps):.1f} decoding sequences a step, "
                      f"largest {biggest} tokens")
            print(stolen.describe())
        finally:
            scheduler.stop()


if __name__ == "__main__":
    main()
