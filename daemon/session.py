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

import bisect
import codecs
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from omnid.daemon.events import PrefillProgress
from omnid.daemon.prefill_rate import PrefillRate
from omnid.daemon.prompt_cache import EntryKind, PromptCache
from omnid.daemon.token_chain import ChainHasher, LiveSequence, TokenChain, TokenizerCache, media_code
from omnid.daemon.sampling import DEFAULT_SEED, Sampler, SamplingParams
from omnid.modalities.decoder import Prompt
from omnid.models.base import (Backend, ChatFrame, InputError, ModelInfo, RemoteGeneration, Segment, TextSegment,
                               check_room)


#: Tokens between checkpoints inside long text on decoders that cannot be cut back (the scheduler sizes it to the
#: RAM budget; see checkpoint_interval).
DEFAULT_CHECKPOINT_INTERVAL = 1024
#: A prompt that ends with at least this many units of text gets a snapshot at its end...
LONG_TEXT_UNITS = 256
#: ...and, where the decoder cannot be cut back, checkpoints this many units before it: a new prompt that only
#: changes its tail (the last sentence, the question, the turn's closing tokens: 10 to 60 tokens with a real
#: tokenizer) resumes there instead of at a grid line up to a whole interval earlier. Each costs a snapshot.
TAIL_CHECKPOINTS = (256, 64, 32)
#: With a progress callback, text is evaluated at most this many tokens a call and progress reported after
#: each. llama.cpp's batch (n_batch 512): no call gets smaller batches than it would anyway; reports come every
#: 10-15 s for a 30B model on a CPU (35-50 tokens/s), many times a second on a GPU.
PROGRESS_CHUNK = 512

OnProgress = Callable[[PrefillProgress], None]


class Cancelled(Exception):
    """The client went away or cancelled: the job stops and the decoder is free for the next one."""


@dataclass
class PrefillStats:
    prompt_tokens: int
    cached_tokens: int
    prefill_ms: float
    prefix_key: str
    #: Of prefill_ms, the time the reused prefix took to bring back (cut back, or a snapshot restored).
    restore_ms: float = 0.0
    #: Where the reused tokens came from: "live", "snapshot", "checkpoint", or "" (nothing reused).
    reused_from: str = ""


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
                 queue_ms: float = 0.0, frame: ChatFrame | None = None, live: LiveSequence | None = None,
                 min_snapshot_tokens: int = 32, tokens: TokenizerCache | None = None,
                 checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL, rate: PrefillRate | None = None,
                 choose_sequence: "Callable[[TokenChain], LiveSequence] | None" = None) -> None:
        self.backend = backend
        self.cache = cache
        self.cancelled = cancelled
        self.info: ModelInfo = backend.info
        #: How long the job waited for the decoder (reported in Usage).
        self.queue_ms = queue_ms
        self.started = time.perf_counter()
        self._frame = frame or backend.chat_frame()
        self._min_snapshot_tokens = min_snapshot_tokens
        self._checkpoint_interval = checkpoint_interval
        #: What the backend's sequence holds. Owned by the scheduler so it outlives the job: the next job can
        #: continue from it, or cut it back to a shared prefix, instead of restoring.
        self._live = live if live is not None else LiveSequence()
        self._tokens = tokens if tokens is not None else TokenizerCache()
        #: The machine's measured prefill rate (owned by the scheduler; every long evaluation updates it).
        self.rate = rate if rate is not None else PrefillRate()
        #: A remote engine's prefill (see _hold_remote): its counts are the engine's once the answer ends.
        self._remote_stats: PrefillStats | None = None
        #: With several sequences, the scheduler may move this job, before it has evaluated anything, to a free
        #: sequence whose live chain shares more of its first prompt (it returns that sequence's LiveSequence).
        self._choose_sequence = choose_sequence

    # -- layout ----------------------------------------------------------------------------------------------

    def build_prompt(self, parts: Sequence[Segment], system: str | None = None, *,
                     open_turn: bool = False) -> Prompt:
        """head + [system] + user turn of parts (+ the assistant's opening unless open_turn).

        Every boundary after the system text and after each part but the last is a cache point, so what
        requests share at the front (a system text, a document, an image) is reused by the next request. With
        open_turn the turn is left open: that is the shape of a Prefill, whose last part is a cache point too.
        """
        f = self._frame
        segs: list[Segment] = [_piece(f.head)]
        points: set[int] = set()
        has_system_slot = bool(f.system_open or f.system_close)
        if system and has_system_slot:
            segs += [_piece(f.system_open), TextSegment(system), _piece(f.system_close)]
            points.add(len(segs))
        segs.append(_piece(f.user_open))
        if system and not has_system_slot:  # templates without a system role (Gemma): it opens the user turn
            segs.append(TextSegment(system + "\n\n"))
            points.add(len(segs))
        for part in parts:
            segs.append(part)
            points.add(len(segs))
        if open_turn:
            return _without_empty(segs, points)
        points.discard(len(segs))
        segs.append(_piece(f.user_close))
        return _without_empty(segs, points)

    def text_prompt(self, text: str) -> Prompt:
        """The template's head (the BOS token) and plain text, no turns: what a text completion continues."""
        return _without_empty([_piece(self._frame.head), TextSegment(text)], set())

    def continue_prompt(self, parts: Sequence[Segment]) -> Prompt:
        """The next user turn after a generated answer, in the same sequence."""
        f = self._frame
        segs: list[Segment] = [_piece(f.assistant_close), _piece(f.user_open), *parts, _piece(f.user_close)]
        return _without_empty(segs, set())

    # -- evaluation ------------------------------------------------------------------------------------------

    @property
    def resume_interval(self) -> int:
        """Tokens between the checkpoints this session takes inside long text: what one resumable point in a
        prompt may cost, sized to the cache's RAM budget (a document groups its pages to about this many)."""
        return self._checkpoint_interval

    def prefill(self, prompt: Prompt, *, save: bool = True, checkpoints: bool = True,
                progress: OnProgress | None = None) -> PrefillStats:
        """Put `prompt` in the sequence, paying only for the tokens no earlier request evaluated.

        The prompt is compared token by token (media by content) with the live sequence and the cache, and the
        longest shared prefix is reused in the cheapest correct way: the live sequence as it is or cut back
        (free), else a snapshot or checkpoint restored (and cut back, where the decoder allows it). The rest is
        evaluated; with `save`, snapshots are taken at the prompt's cache points and, on decoders that cannot
        be cut back and with `checkpoints`, checkpoints inside long text (see `_stops`), for the next request
        that shares them. A pipeline that resumes only from its own cache points (a meeting, clip after clip)
        turns checkpoints off: nobody else will ever start with its prefix (and a document, whose cache points
        at page groups are where other questions resume).

        `progress`, for prompts that leave more than PROGRESS_CHUNK tokens to evaluate: called before the
        evaluation and after every chunk of it, with the tokens done and the rate so far.
        """
        if isinstance(self.backend, RemoteGeneration):
            return self._hold_remote(self.backend, prompt)
        t0 = time.perf_counter()
        self.check_cancelled()
        layout = self._layout(prompt)
        # Each media segment is one unit here and at least one token in the sequence: a prompt of more units than
        # the context is refused before any of it is evaluated (a 4k-token history took minutes of a 30B model's
        # prefill on a CPU only to overflow at the end), and the live sequence stays as it is.
        check_room(0, len(layout.codes), self.info.context_length)
        target = TokenChain(layout.codes)
        if self._choose_sequence is not None:  # the first prefill only: later ones continue this sequence
            self._live = self._choose_sequence(target)
            self._choose_sequence = None
        hasher = self.cache.hasher(target)
        t_reuse = time.perf_counter()
        held, source = self._reuse(target, hasher)
        restore_ms = (time.perf_counter() - t_reuse) * 1000
        cached_tokens = self.backend.n_tokens
        self.cache.record_lookup(cached_tokens, source)
        t_eval = time.perf_counter()
        chain = self._evaluate(prompt, layout, held, hasher, save, checkpoints and not self.backend.can_truncate,
                               progress)
        self.rate.record(self.backend.n_tokens - cached_tokens, time.perf_counter() - t_eval)
        return PrefillStats(prompt_tokens=self.backend.n_tokens, cached_tokens=cached_tokens,
                            prefill_ms=(time.perf_counter() - t0) * 1000, prefix_key=hasher.key(len(chain)),
                            restore_ms=restore_ms, reused_from=source)

    def _hold_remote(self, backend: RemoteGeneration, prompt: Prompt) -> PrefillStats:
        """A remote engine's prefill evaluates nothing: the engine gets the whole prompt with the answer's request
        and reuses its own cached prefix. The prompt's last cache point is what routes it (remote_router)."""
        t0 = time.perf_counter()
        self.check_cancelled()
        self._live.clear()
        n_tokens, key = backend.hold(prompt.segments, max(prompt.cache_points, default=0))
        self._remote_stats = PrefillStats(prompt_tokens=n_tokens, cached_tokens=0,
                                          prefill_ms=(time.perf_counter() - t0) * 1000, prefix_key=key)
        return self._remote_stats

    def _layout(self, prompt: Prompt) -> "_Layout":
        """The prompt's unit codes (text tokenized, media as one code each) and where each segment starts."""
        pieces: list[np.ndarray] = []
        starts = [0]
        for segment in prompt.segments:
            if isinstance(segment, TextSegment):
                text = segment
                pieces.append(self._tokens.get(segment.digest(), lambda: self.backend.tokenize(text)))
            else:
                pieces.append(np.array([media_code(segment.digest())], np.int64))
            starts.append(starts[-1] + len(pieces[-1]))
        codes = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        return _Layout(codes, starts)

    def _reuse(self, target: TokenChain, hasher: ChainHasher) -> tuple[TokenChain, str]:
        """Bring the sequence to the longest reusable prefix of `target`; returns what it holds and whence."""
        n = len(target)
        can_cut = self.backend.can_truncate
        live = self._live.chain
        if n == 0:
            self.backend.reset()
            self._live.clear()
            return live.prefix(0), ""
        on_live = live.common_prefix(target)
        if on_live == len(live) == n:
            return live, "live"  # the very same sequence: its logits are still there
        if not can_cut and on_live < len(live):
            on_live = 0  # a recurrent state cannot be rewound
        on_live = min(on_live, n - 1)  # a cut sequence has no next-token logits: evaluate at least one unit
        match = self.cache.longest_prefix(target, whole_entries_only=not can_cut, hasher=hasher)
        on_cache = 0 if match is None else match.shared
        if match is not None and on_cache == n and len(match.entry.chain) > n:
            on_cache = n - 1
        if on_live > 0 and on_live >= on_cache and self._cut(live, on_live):
            return live.prefix(on_live), "live"
        self._live.clear()
        if match is not None and on_cache > 0:
            entry = match.entry
            snapshot = self.cache.get(entry.key)
            if snapshot is not None:
                try:
                    self.backend.restore(snapshot)
                except InputError:
                    self.cache.drop(entry.key)
                else:
                    if self._cut(entry.chain, on_cache):
                        return entry.chain.prefix(on_cache), entry.kind
        self.backend.reset()
        return TokenChain.empty(), ""

    def _cut(self, held: TokenChain, k: int) -> bool:
        """Cut the sequence (holding `held`) back to its first k units, where needed and possible."""
        return k == len(held) or self.backend.truncate(held.tokens_at(k))

    def _evaluate(self, prompt: Prompt, layout: "_Layout", held: TokenChain, hasher: ChainHasher,
                  save: bool, checkpoints: bool, progress: OnProgress | None = None) -> TokenChain:
        """Evaluate the prompt's units after `held`, snapshotting at the stops; returns the whole chain."""
        chain, u, n = held, len(held), len(layout.codes)
        self._live.set(chain)
        stops = self._stops(prompt, layout, u, checkpoints) if save else {}
        grid = self._checkpoint_interval if save and checkpoints else 0
        last_saved = self.backend.n_tokens
        report = _Reporter(progress, u, n) if progress is not None and n - u > PROGRESS_CHUNK else None
        while u < n:
            self.check_cancelled()
            index = bisect.bisect_right(layout.starts, u) - 1
            segment = prompt.segments[index]
            before = self.backend.n_tokens
            if isinstance(segment, TextSegment):
                # Consecutive text goes to the decoder in one call (each call attends over the whole context
                # once), up to the next stop, media segment or grid line.
                end = next((k for k in sorted(stops) if k > u), n)
                for media_index in range(index + 1, len(prompt.segments)):
                    if not isinstance(prompt.segments[media_index], TextSegment):
                        end = min(end, layout.starts[media_index])
                        break
                if grid:
                    end = min(end, u + grid - before % grid)
                if report is not None:
                    end = min(end, u + PROGRESS_CHUNK)
                tokens = layout.codes[u:end]
                self.backend.append_tokens(tokens.tolist(), should_stop=self.cancelled)
                self.check_cancelled()
                chain, u = chain.extend(tokens), end
            else:
                count = self.backend.append(segment, should_stop=self.cancelled)
                self.check_cancelled()
                chain, u = chain.extend(layout.codes[u:u + 1], ((0, count),)), u + 1
            self._live.set(chain)
            if report is not None:
                report(u)
            kind = stops.get(u)
            if kind is None and grid and self.backend.n_tokens // grid > before // grid \
                    and not any(u < k <= u + self._min_snapshot_tokens for k in stops):
                kind = "checkpoint"  # a grid line, unless a planned stop follows within the minimum gap
            if kind and self.backend.n_tokens - last_saved >= self._min_snapshot_tokens:
                self.cache.put(chain, self.backend.snapshot(), kind, hasher)
                last_saved = self.backend.n_tokens
        return chain

    def _stops(self, prompt: Prompt, layout: "_Layout", start: int, checkpoints: bool) -> dict[int, EntryKind]:
        """Where to snapshot while evaluating from unit `start`: the prompt's cache points, and the end of a
        long run of text that ends the prompt, with (where the decoder cannot be cut back) checkpoints just
        before that end, where a new prompt that changes only its last sentence stops matching this one."""
        n = len(layout.codes)
        stops: dict[int, EntryKind] = {layout.starts[p]: "snapshot" for p in prompt.cache_points
                                       if layout.starts[p] > start}
        last_media = max((i for i, s in enumerate(prompt.segments) if not isinstance(s, TextSegment)), default=-1)
        tail = max(start, layout.starts[last_media + 1])
        if n - tail >= LONG_TEXT_UNITS:
            stops[n] = "snapshot"
            if checkpoints:
                for back in TAIL_CHECKPOINTS:
                    if n - back > tail and back >= self._min_snapshot_tokens:
                        stops.setdefault(n - back, "checkpoint")
        return stops

    def key_of(self, prompt: Prompt) -> str:
        """The cache key of the whole prompt (what a snapshot at its end is found by), tokenized through the
        tokenizer cache as a prefill would."""
        return self.cache.key_of(TokenChain(self._layout(prompt).codes))

    def append_generated(self, token: int) -> None:
        """Put a sampled (or forced) token into the sequence, as `generate` does with each of its tokens."""
        self.backend.append_token(token)
        self._live.append_token(token)

    def remember_tokens(self, segment: TextSegment, tokens: Sequence[int]) -> None:
        """Lay `segment` out as these tokens from now on: what was generated, so a history that sends the answer
        back as text matches the sequence that produced it (the tokenizer may well split the text otherwise)."""
        self._tokens.put(segment.digest(), tokens)

    def save_snapshot(self) -> str:
        """Snapshot the sequence now under the key of the chain it holds; returns that key. A remote engine
        evaluates the held prompt instead, so its own prefix cache holds it."""
        if isinstance(self.backend, RemoteGeneration) and self._remote_stats is not None:
            self.backend.warm()
            return self._remote_stats.prefix_key
        return self.cache.put(self._live.chain, self.backend.snapshot())

    def count_tokens(self, segment: Segment) -> int:
        return self.backend.count_tokens(segment)

    @property
    def free_tokens(self) -> int:
        """Room left in the context."""
        return self.info.context_length - self.backend.n_tokens

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled()

    # -- generation ------------------------------------------------------------------------------------------

    def generate(self, max_tokens: int, sampling: SamplingParams,
                 on_delta: Callable[[str], None] = lambda _: None) -> GenerationResult:
        """Sample up to max_tokens tokens, calling on_delta with each whole-character piece of text.

        The sampled tokens stay in the sequence (a conversation can go on after them). Generated tokens are
        not part of any cached chain: the chain ends where the prompt ended.
        """
        if isinstance(self.backend, RemoteGeneration):
            return self._generate_remote(self.backend, max_tokens, sampling, on_delta)
        sampler = Sampler(sampling)
        stops = StopMatcher(sampling.stop, on_delta)
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
            self._live.append_token(token)
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

    def _generate_remote(self, backend: RemoteGeneration, max_tokens: int, sampling: SamplingParams,
                         on_delta: Callable[[str], None]) -> GenerationResult:
        """The engine samples (with the same settings and seed); stop strings are matched here, as for a local
        backend, and a match or a cancellation closes the engine's stream at once."""
        stops = StopMatcher(sampling.stop, on_delta)
        t_start = time.perf_counter()
        t_first = 0.0

        def on_text(piece: str) -> bool:
            nonlocal t_first
            t_first = t_first or time.perf_counter()
            return stops.feed(piece)
        answer = backend.stream(max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k, seed=sampling.seed or DEFAULT_SEED, on_text=on_text,
                                should_stop=self.cancelled)
        self.check_cancelled()
        if answer.stop_reason != "stop":
            stops.flush()
        stats = self._remote_stats
        if stats is not None and answer.prompt_tokens is not None:  # Usage reads these after the answer
            stats.prompt_tokens = answer.prompt_tokens
        if stats is not None and answer.cached_tokens is not None:
            stats.cached_tokens = answer.cached_tokens
        t_end = time.perf_counter()
        n = answer.generated_tokens
        decode_s = t_end - t_first if n > 1 and t_first else 0.0
        return GenerationResult(
            text=stops.text, stop_reason=answer.stop_reason, generated_tokens=n,
            time_to_first_token_ms=((t_first or t_end) - self.started) * 1000,
            decode_tokens_per_second=(n - 1) / decode_s if decode_s > 0 else 0.0,
            decode_ms=(t_end - t_start) * 1000)


class StopMatcher:
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


class _Reporter:
    """Progress of one evaluation from unit `start` to `total`: once at the start, then after every chunk."""

    def __init__(self, progress: OnProgress, start: int, total: int) -> None:
        self._progress, self._start, self._total = progress, start, total
        self._t0 = time.perf_counter()
        progress(PrefillProgress(start, total, start, 0.0))

    def __call__(self, done: int) -> None:
        self._progress(PrefillProgress(done, self._total, self._start, time.perf_counter() - self._t0))


@dataclass(frozen=True)
class _Layout:
    """A prompt as units: codes (see token_chain) and the unit where each segment starts (plus the end)."""

    codes: np.ndarray
    starts: list[int]


def _piece(text: str) -> TextSegment:
    """A piece of the model's chat template: the only text allowed to turn into control tokens."""
    return TextSegment(text, template=True)


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
