"""Cutting long audio into clips the audio encoder accepts, at quiet points, and merging overlapping transcripts.

Why clips at all: an audio encoder takes a bounded clip (mlx-vlm's Parakeet refuses more than ~400 s; whisper
style encoders pad to 30 s), and timestamps of a transcript come from clip boundaries. Why quiet points: a cut
in the middle of a word splits it between two clips and neither transcribes it. The cutter looks, in the last
part of each clip-sized stretch, for the quietest moment by short-time energy (RMS over 20 ms frames,
smoothed over 200 ms so a single stop consonant is not mistaken for a pause) and cuts there.

The cutter is streaming: it is fed blocks (from a file reader or a microphone) and keeps at most one clip's
worth of samples, so memory does not grow with the length of the recording.

Overlap merge: when a meeting outgrows one decoder context, the next window re-hears the tail of the last
clip; the words heard twice are removed by finding the longest common run of words between the end of the
transcript so far and the start of the new text (`merge_overlap`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

#: Energy frame and smoothing lengths (seconds).
FRAME_SECONDS = 0.02
SMOOTH_SECONDS = 0.2
#: Clips shorter than this are padded with silence: encoders with a stride need a few frames, and a
#: 30 ms tail is not worth a turn of its own anyway (timestamps keep the true length).
MIN_CLIP_SECONDS = 1.0
#: Encoder tokens per clip at most (~80 s of Parakeet): an encoder's attention grows with the square of the
#: clip, so a 20-minute sound is heard as many clips in one decoder context, never as one.
MAX_CLIP_TOKENS = 1024


@dataclass(frozen=True)
class Clip:
    """A stretch of audio at `rate`, starting `start_sample` samples into the recording."""

    pcm: np.ndarray
    rate: int
    start_sample: int

    @property
    def start(self) -> float:
        return self.start_sample / self.rate

    @property
    def end(self) -> float:
        return (self.start_sample + len(self.pcm)) / self.rate

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate


def clip_seconds(target_seconds: float, encoder_max_seconds: float | None, tokens_per_second: float,
                 max_clip_tokens: int) -> float:
    """The longest clip to cut: the wanted length, bounded by the encoder's limit and a token budget per clip."""
    limit = target_seconds
    if encoder_max_seconds:
        limit = min(limit, encoder_max_seconds)
    if tokens_per_second > 0 and max_clip_tokens > 0:
        limit = min(limit, max_clip_tokens / tokens_per_second)
    if limit < MIN_CLIP_SECONDS:
        raise ValueError(f"clips of {limit:.2f} s are too short to transcribe")
    return limit


def quiet_point(pcm: np.ndarray, rate: int, lo: int, hi: int) -> int:
    """The sample index in [lo, hi] where the smoothed short-time energy is lowest (the latest on ties)."""
    frame = max(1, int(rate * FRAME_SECONDS))
    lo_f, hi_f = lo // frame, max(lo // frame + 1, hi // frame)
    span = pcm[lo_f * frame:hi_f * frame]
    n = len(span) // frame
    if n <= 1:
        return hi
    energy = np.square(span[:n * frame].reshape(n, frame), dtype=np.float32).mean(axis=1)
    width = max(1, int(SMOOTH_SECONDS / FRAME_SECONDS))
    if n > width:
        energy = np.convolve(energy, np.ones(width, dtype=np.float32) / width, mode="same")
    best = n - 1 - int(np.argmin(energy[::-1]))  # the latest minimum: longer clips, fewer turns
    return (lo_f + best) * frame + frame // 2


class ClipCutter:
    """Cuts a stream of mono blocks into clips of at most `max_seconds`, each ending at a quiet point.

    A cut is searched in the last `search_fraction` of each max-length stretch, so clips are between
    (1 - search_fraction) * max_seconds and max_seconds long, except the last one.
    """

    def __init__(self, rate: int, max_seconds: float, search_fraction: float = 0.4) -> None:
        if not 0.0 < search_fraction < 1.0:
            raise ValueError("search_fraction must be in (0, 1)")
        self.rate = rate
        self.max_samples = int(max_seconds * rate)
        self.min_samples = int(self.max_samples * (1.0 - search_fraction))
        self._blocks: list[np.ndarray] = []
        self._buffered = 0
        self._start = 0  # sample index of the buffer's first sample in the whole recording

    def feed(self, block: np.ndarray) -> list[Clip]:
        """Add samples; returns the clips completed by them (usually none or one)."""
        if len(block):
            self._blocks.append(np.asarray(block, dtype=np.float32))
            self._buffered += len(block)
        clips = []
        while self._buffered >= self.max_samples:
            buffer = self._take_all()
            cut = quiet_point(buffer, self.rate, self.min_samples, self.max_samples)
            clips.append(Clip(buffer[:cut].copy(), self.rate, self._start))
            self._start += cut
            rest = buffer[cut:]
            if len(rest):
                self._blocks, self._buffered = [rest.copy()], len(rest)
        return clips

    def finish(self) -> list[Clip]:
        """The rest of the stream as a last clip (none when nothing is left)."""
        if not self._buffered:
            return []
        buffer = self._take_all()
        return [Clip(buffer, self.rate, self._start)]

    def _take_all(self) -> np.ndarray:
        buffer = self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks)
        self._blocks, self._buffered = [], 0
        return buffer


def padded(pcm: np.ndarray, rate: int, min_seconds: float = MIN_CLIP_SECONDS) -> np.ndarray:
    """The clip, with silence appended up to min_seconds."""
    need = int(min_seconds * rate) - len(pcm)
    return np.concatenate([pcm, np.zeros(need, dtype=np.float32)]) if need > 0 else pcm


def overlap_clip(previous: Clip, clip: Clip, overlap_seconds: float, max_seconds: float) -> Clip:
    """`clip` preceded by the tail of `previous` (cut at a quiet point), within the encoder's length limit.

    This is the first clip of a new decoder window: hearing the tail again gives the model the context of the
    sentence in progress, and the words heard twice are removed afterwards by merge_overlap.
    """
    room = int(max_seconds * previous.rate) - len(clip.pcm)
    want = min(int(overlap_seconds * previous.rate), room, len(previous.pcm))
    if want <= previous.rate // 10:
        return clip
    # Start the overlap at a quiet point in the first half of the wanted tail, not mid-word.
    tail_start = len(previous.pcm) - want
    start = quiet_point(previous.pcm, previous.rate, tail_start, tail_start + want // 2)
    return Clip(np.concatenate([previous.pcm[start:], clip.pcm]), clip.rate, previous.start_sample + start)


_WORD = re.compile(r"\S+")


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.casefold())


def merge_overlap(previous: str, new: str, overlap_fraction: float, min_run: int = 2) -> str:
    """The part of `new` that follows what `previous` already said.

    `new` transcribes audio whose first `overlap_fraction` was already transcribed at the end of `previous`.
    The longest run of words (compared case- and punctuation-insensitively) shared by the tail of `previous`
    and the head of `new` marks where they meet: the words of `new` after that run are new. When no run of
    `min_run` words is shared (a garbled overlap), the share of `new`'s words matching the overlap's share of
    its audio is dropped instead, so nothing is repeated wholesale and at most a word or two is lost.
    """
    new_words = _WORD.findall(new)
    if not new_words:
        return ""
    prev_words = _WORD.findall(previous)
    expected = int(round(len(new_words) * overlap_fraction))
    # Look at a generous window: the overlap's words, give or take the model's variability.
    head = [_norm(w) for w in new_words[:max(expected * 2, expected + 8)]]
    tail = [_norm(w) for w in prev_words[-max(expected * 2, expected + 8):]] if prev_words else []
    best_len, best_end_new = 0, 0
    # Dynamic programming over common suffixes: run[j] = length of the common run ending at tail[i], head[j].
    run = [0] * (len(head) + 1)
    for i in range(len(tail)):
        nxt = [0] * (len(head) + 1)
        for j in range(len(head)):
            if tail[i] and tail[i] == head[j]:
                nxt[j + 1] = run[j] + 1
                if nxt[j + 1] > best_len or (nxt[j + 1] == best_len and j + 1 > best_end_new):
                    best_len, best_end_new = nxt[j + 1], j + 1
        run = nxt
    cut = best_end_new if best_len >= min_run else min(expected, len(new_words))
    return " ".join(new_words[cut:])


def cut_stream(blocks: Iterable[np.ndarray], rate: int, max_seconds: float) -> Iterator[Clip]:
    """Clips from a stream of mono blocks (a file being read, a microphone being recorded), as they complete."""
    cutter = ClipCutter(rate, max_seconds)
    for block in blocks:
        yield from cutter.feed(block)
    yield from cutter.finish()
