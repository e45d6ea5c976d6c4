"""A job's exclusive use of the decoder: prompt layout, prefill through the shared cache, generation.

The scheduler hands one `DecoderSession` to each job it runs. Every pipeline (a plain Generate, a document
question, a meeting transcribed clip by clip, a screen frame) is written against this class only, so the
cache rules and the generation loop exist once:

  prompt = session.build_prompt(parts, system)     # the chat template's pieces around the parts
  stats = session.prefill(prompt)                  # reuse the longest known prefix, evaluate the rest
  result = session.generate(max_tokens, sampling, on_delta)

A conversation goes on by prefilling its whole chain again (earlier answers as text segments, then
session.continue_prompt(more)): the prefix is live or cached, so only the new turn costs anything.
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, cast

from omnid.daemon.prompt_cache import PromptCache, chain_keys
from omnid.daemon.sampling import Sampler, SamplingParams
from omnid.models.base import Backend, ChatFrame, InputError, ModelInfo, Segment, TextSegment


class Cancelled(Exception):
    """The client went away or cancelled: the job stops and the decoder is free for the next one."""


@dataclass(frozen=True)
class Prompt:
    """A segment chain plus the boundaries worth snapshotting (numbers of leading segments)."""

    segments: tuple[Segment, ...]
    cache_points: frozenset[int] = field(default_factory=frozenset)

    def __add__(self, other: "Prompt") -> "Prompt":
        shift = len(self.segments)
        return Prompt(self.segments + other.segments,
                      self.cache_points | {shift + p for p in other.cache_points})


@dataclass
class PrefillStats:
    prompt_tokens: int
    cached_tokens: int
    prefill_ms: float
    prefix_key: str
    #: Of prefill_ms, the time the reused prefix took to bring back (cut back, or a snapshot restored).
    restore_ms: float = 0.0


@dataclass
class GenerationResult:
    text: str
    stop_reason: str  # "eos", "max_tokens", "stop", "context_full"
    generated_tokens: int
    time_to_first_token_ms: float
    decode_tokens_per_second: float
    decode_ms: float


class DecoderSession:
    """Exclusive, single-threaded use of the backend for one job."""

    def __init__(self, backend: Backend, cache: PromptCache, cancelled: Callable[[], bool],
                 queue_ms: float = 0.0, frame: ChatFrame | None = None, live: dict[str, int] | None = None,
                 min_snapshot_tokens: int = 32) -> None:
        self.backend = backend
        self.cache = cache
        self.cancelled = cancelled
        self.info: ModelInfo = backend.info
        #: How long the job waited for the decoder (reported in Usage).
        self.queue_ms = queue_ms
        self.started = time.perf_counter()
        self._frame = frame or backend.chat_frame()
        self._root_key = f"{self.info.fingerprint}|{self._frame.template_digest}"
        self._min_snapshot_tokens = min_snapshot_tokens
        # Keys of the chain this job evaluated (save_snapshot names the sequence by the last one).
        self._keys: list[str] = []
        #: Chain key -> n_tokens of every boundary the backend's sequence holds now. Owned by the scheduler so
        #: it outlives the job: the next job can cut the sequence back to a shared prefix instead of restoring.
        self._live = live if live is not None else {}

    # -- layout ----------------------------------------------------------------------------------------------

    def build_prompt(self, parts: Sequence[Segment], system: str | None = None, *,
                     open_turn: bool = False) -> Prompt:
        """head + [system] + user turn of parts (+ the assistant's opening unless open_turn).

        Every boundary after the system text and after each part but the last is a cache point, so what
        requests share at the front (a system text, a document, an image) is reused by the next request. With
        open_turn the turn is left open: that is the shape of a Prefill, whose last part is a cache point too.
        """
        f = self._frame
        segs: list[Segment] = [TextSegment(f.head)]
        points: set[int] = set()
        has_system_slot = bool(f.system_open or f.system_close)
        if system and has_system_slot:
            segs += [TextSegment(f.system_open), TextSegment(system), TextSegment(f.system_close)]
            points.add(len(segs))
        segs.append(TextSegment(f.user_open))
        if system and not has_system_slot:  # templates without a system role (Gemma): it opens the user turn
            segs.append(TextSegment(system + "\n\n"))
            points.add(len(segs))
        for part in parts:
            segs.append(part)
            points.add(len(segs))
        if open_turn:
            return _without_empty(segs, points)
        points.discard(len(segs))
        segs.append(TextSegment(f.user_close))
        return _without_empty(segs, points)

    def continue_prompt(self, parts: Sequence[Segment]) -> Prompt:
        """The next user turn after a generated answer, in the same sequence."""
        f = self._frame
        segs: list[Segment] = [TextSegment(f.assistant_close), TextSegment(f.user_open), *parts,
                               TextSegment(f.user_close)]
        return _without_empty(segs, set())

    # -- evaluation ------------------------------------------------------------------------------------------

    def prefill(self, prompt: Prompt, *, save: bool = True) -> PrefillStats:
        """Put `prompt` in the sequence, paying only for what no earlier request evaluated.

        The longest prefix already evaluated is reused in the cheapest correct way: cut the live sequence back
        to it (free, where the decoder can be cut), else restore its snapshot from the cache. The rest is
        evaluated, and snapshots are saved at the prompt's cache points (when at least min_snapshot_tokens
        were evaluated since the last saved or restored one) for the next request that shares them.
        """
        t0 = time.perf_counter()
        self.check_cancelled()
        keys = chain_keys(self._root_key, (s.digest() for s in prompt.segments))
        t_reuse = time.perf_counter()
        reused = self._reuse(keys)
        restore_ms = (time.perf_counter() - t_reuse) * 1000
        cached_tokens = self.backend.n_tokens
        self.cache.record_lookup(cached_tokens)
        self._keys = keys[:reused]
        last_saved = self.backend.n_tokens
        snapshot_points = prompt.cache_points if save else frozenset()
        start = reused
        while start < len(prompt.segments):
            end = _run_end(prompt.segments, start, snapshot_points)
            self._append_run(prompt.segments[start:end], keys[start:end])
            if end in snapshot_points and self.backend.n_tokens - last_saved >= self._min_snapshot_tokens:
                self.cache.put(keys[end - 1], self.backend.snapshot())
                last_saved = self.backend.n_tokens
            start = end
        return PrefillStats(prompt_tokens=self.backend.n_tokens, cached_tokens=cached_tokens,
                            prefill_ms=(time.perf_counter() - t0) * 1000, prefix_key=keys[-1] if keys else "",
                            restore_ms=restore_ms)

    def _reuse(self, keys: list[str]) -> int:
        """Bring the sequence to the longest known prefix of `keys`; returns how many segments it holds."""
        # Live: boundaries the sequence holds now (keys hash their whole prefix, so a key match is a prefix
        # match). At least one segment is left to evaluate: a cut sequence has no next-token logits.
        live = next((i for i in range(len(keys) - 1, 0, -1) if keys[i - 1] in self._live), 0)
        cached, snapshot = self.cache.longest_prefix(keys, len(keys))
        if live and live >= cached and self.backend.truncate(self._live[keys[live - 1]]):
            kept = self._live[keys[live - 1]]
            for key in [k for k, n in self._live.items() if n > kept]:
                del self._live[key]
            return live
        self._live.clear()
        if snapshot is not None:
            try:
                self.backend.restore(snapshot)
                self._live[keys[cached - 1]] = snapshot.n_tokens
                return cached
            except InputError:
                self.cache.drop(keys[cached - 1])
        self.backend.reset()
        return 0

    def save_snapshot(self) -> str:
        """Snapshot the sequence now under the key of the chain evaluated so far; returns that key."""
        key = self._keys[-1]
        self.cache.put(key, self.backend.snapshot())
        return key

    def count_tokens(self, segment: Segment) -> int:
        return self.backend.count_tokens(segment)

    @property
    def free_tokens(self) -> int:
        """Room left in the context."""
        return self.info.context_length - self.backend.n_tokens

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()

    def _append_run(self, segments: Sequence[Segment], keys: Sequence[str]) -> None:
        """Evaluate one segment, or a run of text segments in one backend call (see _run_end)."""
        self.check_cancelled()
        start = self.backend.n_tokens
        if len(segments) == 1:
            counts = [self.backend.append(segments[0], should_stop=self.cancelled)]
        else:
            counts = self.backend.append_texts(cast(Sequence[TextSegment], segments), should_stop=self.cancelled)
        self.check_cancelled()
        for key, n in zip(keys, counts):
            start += n
            self._keys.append(key)
            self._live[key] = start

    # -- generation ------------------------------------------------------------------------------------------

    def generate(self, max_tokens: int, sampling: SamplingParams,
                 on_delta: Callable[[str], None] = lambda _: None) -> GenerationResult:
        """Sample up to max_tokens tokens, calling on_delta with each whole-character piece of text.

        The sampled tokens stay in the sequence (a conversation can go on after them). Generated tokens are
        not part of any cached chain: the chain ends where the prompt ended.
        """
        sampler = Sampler(sampling)
        stops = _StopMatcher(sampling.stop, on_delta)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t_start = time.perf_counter()
        t_first = 0.0
        n, reason = 0, "max_tokens"
        while n < max_tokens:
            self.check_cancelled()
            token = sampler.sample(self.backend.logits())
            if self.backend.is_end_of_generation(token):
                reason = "eos"
                break
            n += 1
            if n == 1:
                t_first = time.perf_counter()
            if stops.feed(utf8.decode(self.backend.token_bytes(token))):
                reason = "stop"
                break
            if self.backend.n_tokens >= self.info.context_length:
                reason = "context_full"
                break
            self.backend.append_token(token)
        if reason != "stop":
            stops.feed(utf8.decode(b"", final=True))
            stops.flush()
        t_end = time.perf_counter()
        decode_s = t_end - t_first if n > 1 else 0.0
        return GenerationResult(
            text=stops.text, stop_reason=reason, generated_tokens=n,
            time_to_first_token_ms=((t_first or t_end) - self.started) * 1000,
            decode_tokens_per_second=(n - 1) / decode_s if decode_s > 0 else 0.0,
            decode_ms=(t_end - t_start) * 1000)


class _StopMatcher:
    """Streams text out, holding back only what could still become a stop string."""

    def __init__(self, stops: Sequence[str], on_delta: Callable[[str], None]) -> None:
        self._stops = [s for s in stops if s]
        self._on_delta = on_delta
        self._pending = ""
        self.text = ""

    def feed(self, piece: str) -> bool:
        """Add text; returns True when a stop string completed (the text before it is emitted)."""
        self._pending += piece
        for stop in self._stops:
            at = self._pending.find(stop)
            if at >= 0:
                self._emit(self._pending[:at])
                self._pending = ""
                return True
        hold = max((_overlap(self._pending, s) for s in self._stops), default=0)
        self._emit(self._pending[:len(self._pending) - hold])
        self._pending = self._pending[len(self._pending) - hold:]
        return False

    def flush(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, text: str) -> None:
        if text:
            self.text += text
            self._on_delta(text)


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of stop."""
    for k in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def _run_end(segments: Sequence[Segment], start: int, snapshot_points: frozenset[int]) -> int:
    """End (exclusive) of the run of segments evaluated together from `start`: consecutive text segments, cut
    at each boundary where a snapshot may be taken (one needs the sequence to stop exactly there)."""
    end = start + 1
    while (end < len(segments) and end not in snapshot_points
           and isinstance(segments[end - 1], TextSegment) and isinstance(segments[end], TextSegment)):
        end += 1
    return end


def _empty(segment: Segment) -> bool:
    return isinstance(segment, TextSegment) and not segment.text


def _without_empty(segments: list[Segment], points: set[int]) -> Prompt:
    """Drop empty template pieces, renumbering the cache points to match."""
    kept: list[Segment] = []
    new_points: set[int] = set()
    for i, segment in enumerate(segments, start=1):
        if not _empty(segment):
            kept.append(segment)
        if i in points:
            new_points.add(len(kept))
    return Prompt(tuple(kept), frozenset(new_points))
