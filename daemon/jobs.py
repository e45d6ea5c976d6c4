"""The decoder jobs every front end runs, written once: a job takes the DecoderSession and an `emit` for its
typed events (daemon/events.py) and returns its typed result.

A front end (the gRPC mixins in daemon/rpc_*.py today, an HTTP gateway tomorrow) checks and decodes a
request in its own thread, submits one of these to the scheduler, and converts what comes back into its own
messages. Nothing here knows about any wire format.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from omnid.daemon.events import Done, TextDelta, Usage
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DecoderSession, GenerationResult, PrefillStats
from omnid.models.base import Segment

Emit = Callable[[Any], None]


def usage_of(session: DecoderSession, stats: PrefillStats, result: GenerationResult) -> Usage:
    return Usage(
        prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
        generated_tokens=result.generated_tokens, time_to_first_token_ms=result.time_to_first_token_ms,
        decode_tokens_per_second=result.decode_tokens_per_second, queue_ms=session.queue_ms,
        prefill_ms=stats.prefill_ms, total_ms=session.queue_ms + stats.prefill_ms + result.decode_ms,
        cache_restore_ms=stats.restore_ms)


def answer(session: DecoderSession, stats: PrefillStats, max_tokens: int, sampling: SamplingParams,
           emit: Emit) -> Done:
    """The end of every generating job: stream the answer as TextDelta events, return it whole with its usage."""
    result = session.generate(max_tokens, sampling, lambda text: emit(TextDelta(text)))
    return Done(text=result.text, usage=usage_of(session, stats, result), stop_reason=result.stop_reason)


def generate(segments: Sequence[Segment], system: str | None, max_tokens: int,
             sampling: SamplingParams) -> Callable[[DecoderSession, Emit], Done]:
    """A plain answer to one user turn of `segments`."""
    def job(session: DecoderSession, emit: Emit) -> Done:
        stats = session.prefill(session.build_prompt(segments, system))
        return answer(session, stats, max_tokens, sampling, emit)
    return job


def prefill(segments: Sequence[Segment], system: str | None,
            pin: bool) -> Callable[[DecoderSession, Emit], PrefillStats]:
    """Evaluate an open user turn into the shared cache (and pin it), for later requests that start with it."""
    def job(session: DecoderSession, emit: Emit) -> PrefillStats:
        stats = session.prefill(session.build_prompt(segments, system, open_turn=True))
        if pin:
            session.cache.pin(stats.prefix_key)  # first: a pinned entry is kept even over the RAM budget
        if not session.cache.contains(stats.prefix_key):
            session.save_snapshot()
        return stats
    return job
