"""The decoder jobs every front end runs, written once: a job takes the DecoderSession and an `emit` for its
typed events (daemon/events.py) and returns its typed result.

A front end (the gRPC mixins in daemon/rpc_*.py today, an HTTP gateway tomorrow) checks and decodes a
request in its own thread, submits one of these to the scheduler, and converts what comes back into its own
messages. Nothing here knows about any wire format. The prompts themselves are laid out by the pipelines
(modalities/); a job puts one on the decoder, streams the answer and says what it cost.

Sections: plain answers, documents, the screen (a meeting's clips are jobs of modalities/meetings.py, run
through rpc_meetings' runner).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from omnid.daemon.events import Done, PagesUsed, Progress, TextDelta, Usage
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DecoderSession, GenerationResult, PrefillStats, Prompt
from omnid.daemon.token_chain import TokenChain, media_code
from omnid.modalities.document_prompt import SYSTEM, choose_pages, layout, page_segments, question_segment
from omnid.modalities.document_store import StoredPage
from omnid.modalities.screen_store import Observation
from omnid.modalities.screen_watcher import ChangedFrame, frame_prompt
from omnid.models.base import ContextOverflow, Segment, TextSegment

Emit = Callable[[Any], None]


# -- plain answers -------------------------------------------------------------------------------------------


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


# -- documents -----------------------------------------------------------------------------------------------


def count_pages(pages: Sequence[StoredPage], vision: bool) -> Callable[[DecoderSession, Emit], int]:
    """Count every page's tokens as the model will see the page (stored on each page); returns the total."""
    def job(session: DecoderSession, emit: Emit) -> int:
        total = 0
        for i, page in enumerate(pages, start=1):
            session.check_cancelled()
            page.tokens = sum(session.count_tokens(s) for s in page_segments(page, vision))
            total += page.tokens
            if i % 10 == 0 or i == len(pages):
                emit(Progress("counting", i, len(pages), total))
        return total
    return job


def warm_document(pages: Sequence[StoredPage], vision: bool) -> Callable[[DecoderSession, Emit], str]:
    """Prefill a whole document into the shared prompt cache (so even its first question is warm); returns
    the cache key of its prefix."""
    segments = layout(pages, vision)
    total = sum(p.tokens for p in pages)

    def job(session: DecoderSession, emit: Emit) -> str:
        emit(Progress("prefilling", len(pages), len(pages), total))
        stats = session.prefill(document_prompt(session, segments))
        if not session.cache.contains(stats.prefix_key):
            session.save_snapshot()
        return stats.prefix_key
    return job


def ask_document(pages: Sequence[StoredPage], question: str, *, first: int, last: int, whole: bool, vision: bool,
                 max_tokens: int, sampling: SamplingParams) -> Callable[[DecoderSession, Emit], Done]:
    """Answer a question from pages first..last of a document: all of them when they fit the context, else
    the pages that match the question best (PagesUsed says which, and why)."""
    asked = question_segment(question.strip())

    def job(session: DecoderSession, emit: Emit) -> Done:
        context_length = session.info.context_length
        fixed = sum(session.count_tokens(s) for s in session.build_prompt([asked], SYSTEM).segments)
        room = context_length - fixed - max_tokens
        budget = room - _margin(room)
        chosen = list(pages)
        if sum(p.tokens for p in pages) <= budget:
            if not whole:
                emit(PagesUsed(tuple(p.number for p in pages), f"the requested pages {first}-{last}"))
        else:
            choice = choose_pages(pages, question, budget, whole=whole)
            if not choice.pages:
                raise ContextOverflow(fixed + max_tokens + min(p.tokens for p in pages), context_length)
            emit(PagesUsed(tuple(choice.pages), choice.reason))
            chosen = [p for p in pages if p.number in set(choice.pages)]
        stats = session.prefill(document_prompt(session, layout(chosen, vision), asked))
        return answer(session, stats, max_tokens, sampling, emit)
    return job


def forget_document(pages: Sequence[StoredPage], vision: bool) -> Callable[[DecoderSession, Emit], int]:
    """Drop every cache entry made from a document's content (its warm prefix, checkpoints inside it, snapshots
    of questions after it: all that shares more with it than the system text every document prompt starts
    with); returns how many. The pages are tokenized as the prompts had them."""
    segments = layout(pages, vision)

    def job(session: DecoderSession, emit: Emit) -> int:
        shared = unit_chain(session, session.build_prompt([], SYSTEM, open_turn=True).segments)
        document = unit_chain(session, document_prompt(session, segments).segments)
        return session.cache.drop_sharing(document, beyond=len(shared))
    return job


def unit_chain(session: DecoderSession, segments: Sequence[Segment]) -> TokenChain:
    """The cache's units for these segments (text tokens, one code per media item), as a prefill lays them out."""
    codes = [np.asarray(session.backend.tokenize(s), np.int64) if isinstance(s, TextSegment)
             else np.array([media_code(s.digest())], np.int64) for s in segments]
    return TokenChain(np.concatenate(codes) if codes else np.zeros(0, np.int64))


def document_prompt(session: DecoderSession, segments: list[Segment], question: TextSegment | None = None) -> Prompt:
    """The document prompt with one cache point, after the document; without a question, just that prefix.

    The prefix of a question's prompt is exactly the prefix prompt, so what ingest warms is what every
    question restores.
    """
    prefix = session.build_prompt(segments, SYSTEM, open_turn=True)
    if question is None:
        return Prompt(prefix.segments, frozenset({len(prefix.segments)}))
    full = session.build_prompt([*segments, question], SYSTEM)
    return Prompt(full.segments, frozenset({len(prefix.segments)}))


def _margin(room: int) -> int:
    """Slack for tokenizing joined pages vs. page by page (a token or two may merge at a page boundary)."""
    return 16 + room // 100


# -- the screen ----------------------------------------------------------------------------------------------

ASK_SCREEN_SYSTEM = (
    "You answer the user's questions about what their screen showed, using only the timestamped "
    "observations given (local time). Say when something is not in the observations.")


def describe_frame(frame: ChangedFrame, max_tokens: int,
                   sampling: SamplingParams = SamplingParams()) -> Callable[[DecoderSession, Emit], Done]:
    """One grabbed frame described, streamed (ScreenOnce)."""
    def job(session: DecoderSession, emit: Emit) -> Done:
        stats = session.prefill(frame_prompt(session, frame))
        return answer(session, stats, max_tokens, sampling, emit)
    return job


def ask_screen(observations: Sequence[Observation], question: str, max_tokens: int,
               sampling: SamplingParams = SamplingParams()) -> Callable[[DecoderSession, Emit], Done]:
    """A question about the screen history: the newest observations that fit the context, then the question."""
    def job(session: DecoderSession, emit: Emit) -> Done:
        lines = [_line(o) for o in observations]
        asked = TextSegment(f"Now: {_clock(time.time())}\nQuestion: {question}")
        room = session.free_tokens - max_tokens - session.count_tokens(asked) - 256
        history = TextSegment("Observations:\n" + "\n".join(lines))
        while len(lines) > 1 and session.count_tokens(history) > room:  # keep the newest that fit
            lines = lines[max(1, len(lines) // 10):]
            history = TextSegment("Observations:\n" + "\n".join(lines))
        # The only cache point is after the system text: no snapshot of the history is kept, so what
        # DeleteScreenHistory deletes leaves nothing behind in the prompt cache.
        prompt = session.build_prompt([history, asked], ASK_SCREEN_SYSTEM)
        prompt = dataclasses.replace(prompt, cache_points=frozenset(sorted(prompt.cache_points)[:1]))
        stats = session.prefill(prompt)
        return answer(session, stats, max_tokens, sampling, emit)
    return job


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _line(o: Observation) -> str:
    where = " - ".join(p for p in (o.app, o.window) if p)
    return f"[{_clock(o.time_unix)}]{' ' + where if where else ''}: {o.text or '(no description)'}"
