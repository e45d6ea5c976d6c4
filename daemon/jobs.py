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
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from omnid.daemon.events import Done, PagesUsed, Progress, TextDelta, Usage
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DecoderSession, GenerationResult, PrefillStats, Prompt
from omnid.daemon.token_chain import TokenChain, media_code
from omnid.modalities.document_prompt import (SYSTEM, PageChoice, best_matches, choose_pages, grouped_layout,
                                              page_segments, question_segment)
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
    """A plain answer to one user turn of `segments` (a long prompt reports PrefillProgress first)."""
    def job(session: DecoderSession, emit: Emit) -> Done:
        stats = session.prefill(session.build_prompt(segments, system), progress=emit)
        return answer(session, stats, max_tokens, sampling, emit)
    return job


def complete(text: str, max_tokens: int, sampling: SamplingParams) -> Callable[[DecoderSession, Emit], Done]:
    """Plain text continued as it is, with no chat turns around it (OpenAI's /v1/completions)."""
    def job(session: DecoderSession, emit: Emit) -> Done:
        stats = session.prefill(session.text_prompt(text))
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


def warm_document(pages: Sequence[StoredPage], vision: bool,
                  head: TextSegment) -> Callable[[DecoderSession, Emit], str]:
    """Prefill a whole document into the shared prompt cache (so even its first question is warm); returns
    the cache key of its prefix. Its progress comes as PrefillProgress events."""
    total = sum(p.tokens for p in pages)

    def job(session: DecoderSession, emit: Emit) -> str:
        emit(Progress("prefilling", len(pages), len(pages), total))
        groups = grouped_layout(pages, vision, session.resume_interval)
        stats = session.prefill(document_prompt(session, head, groups), checkpoints=False, progress=emit)
        if not session.cache.contains(stats.prefix_key):
            session.save_snapshot()
        return stats.prefix_key
    return job


def measure_prefill(pages: Sequence[StoredPage], vision: bool, head: TextSegment,
                    sample_tokens: int) -> Callable[[DecoderSession, Emit], float]:
    """This machine's prefill rate (tokens/s), for saying what a question on a document larger than the
    context will cost. Until the daemon has measured it on real prompts, the document's first pages (up to
    `sample_tokens`, one page at least) are prefilled to measure it: they stay in the cache as the start of
    page sets that begin with them. 0 when still unknown (the sample was cached already)."""
    def job(session: DecoderSession, emit: Emit) -> float:
        if not session.rate.tokens_per_second:
            sample: list[StoredPage] = []
            taken = 0
            for page in pages:
                if sample and taken + page.tokens > sample_tokens:
                    break
                sample.append(page)
                taken += page.tokens
            emit(Progress("measuring", len(sample), len(pages), taken))
            groups = grouped_layout(sample, vision, session.resume_interval)
            session.prefill(document_prompt(session, head, groups), checkpoints=False, progress=emit)
        return session.rate.tokens_per_second
    return job


def ask_document(pages: Sequence[StoredPage], question: str, *, head: TextSegment, first: int, last: int,
                 whole: bool, vision: bool, max_tokens: int, sampling: SamplingParams,
                 recent: RecentPageSets) -> Callable[[DecoderSession, Emit], Done]:
    """Answer a question from pages first..last of a document: all of them when they fit the context, else
    the pages that match the question best, or an earlier question's page set in the cache that holds its best
    matches (`recent`; PagesUsed says which, and why). Pages go in document order in groups that each end at a
    cache point, the question last (see modalities/document_prompt.py)."""
    asked = question_segment(question.strip())

    def job(session: DecoderSession, emit: Emit) -> Done:
        context_length = session.info.context_length
        fixed = sum(session.count_tokens(s) for s in session.build_prompt([head, asked], SYSTEM).segments)
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
            choice = _cached_choice(session, pages, question, head, vision, budget, recent) or choice
            emit(PagesUsed(tuple(choice.pages), choice.reason))
            recent.remember(tuple(choice.pages))
            chosen = [p for p in pages if p.number in set(choice.pages)]
        groups = grouped_layout(chosen, vision, session.resume_interval)
        stats = session.prefill(document_prompt(session, head, groups, asked), checkpoints=False, progress=emit)
        return answer(session, stats, max_tokens, sampling, emit)
    return job


class RecentPageSets:
    """The page sets a document's last questions were answered from, newest first (used on the decoder thread
    only: the jobs of one daemon run one at a time)."""

    def __init__(self, keep: int = 4) -> None:
        self._sets: list[tuple[int, ...]] = []
        self._keep = keep

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(list(self._sets))

    def remember(self, numbers: tuple[int, ...]) -> None:
        self._sets = [numbers, *(s for s in self._sets if s != numbers)][:self._keep]


def _cached_choice(session: DecoderSession, pages: Sequence[StoredPage], question: str, head: TextSegment,
                   vision: bool, budget: int, recent: RecentPageSets) -> PageChoice | None:
    """An earlier question's page set that holds this question's best matches, fits the budget and is still in
    the prompt cache (so only the question is read), or None."""
    wanted = best_matches(pages, question)
    by_number = {p.number: p for p in pages}
    for numbers in recent if wanted else ():
        if not wanted <= set(numbers) or not set(numbers) <= by_number.keys():
            continue
        chosen = [by_number[n] for n in numbers]
        if sum(p.tokens for p in chosen) > budget:
            continue
        prefix = document_prompt(session, head, grouped_layout(chosen, vision, session.resume_interval))
        if session.cache.contains(session.key_of(prefix)):
            return PageChoice(list(numbers), f"the pages matching the question best ({len(wanted)}) are all in the "
                                             f"{len(numbers)} pages an earlier question used, which are in the "
                                             "prompt cache: answered from those")
    return None


def forget_document(head: TextSegment) -> Callable[[DecoderSession, Emit], int]:
    """Drop every cache entry made from a document's content (its warm prefix, its page groups, snapshots of
    questions after them: every entry that holds the document's header after the system text all document
    prompts start with); returns how many."""
    def job(session: DecoderSession, emit: Emit) -> int:
        chain = unit_chain(session, session.build_prompt([head], SYSTEM, open_turn=True).segments)
        return session.cache.drop_sharing(chain, beyond=len(chain) - 1)
    return job


def unit_chain(session: DecoderSession, segments: Sequence[Segment]) -> TokenChain:
    """The cache's units for these segments (text tokens, one code per media item), as a prefill lays them out."""
    codes = [np.asarray(session.backend.tokenize(s), np.int64) if isinstance(s, TextSegment)
             else np.array([media_code(s.digest())], np.int64) for s in segments]
    return TokenChain(np.concatenate(codes) if codes else np.zeros(0, np.int64))


def document_prompt(session: DecoderSession, head: TextSegment, groups: Sequence[Sequence[Segment]],
                    question: TextSegment | None = None) -> Prompt:
    """The document prompt: system text, header, page groups (+ the question and the turn's close), with a
    cache point after every page group; without a question, just the prefix.

    The prefix of a question's prompt is exactly the prefix prompt, so what ingest warms is what every
    question on the same pages restores. No cache point after the system text alone: on a hybrid decoder every
    snapshot holds the whole recurrent state (~50 MB for the target) to save the ~100 tokens of that text, and
    deleting a document leaves no entry behind that its questions made.
    """
    parts: list[Segment] = [head, *(s for group in groups for s in group)]
    prefix = session.build_prompt(parts, SYSTEM, open_turn=True)
    end = len(prefix.segments) - len(parts) + 1  # the parts are the prefix's last segments (none is empty)
    points: set[int] = set()
    for group in groups:
        end += len(group)
        points.add(end)
    segments = prefix.segments if question is None else session.build_prompt([*parts, question], SYSTEM).segments
    return Prompt(segments, frozenset(points))


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
