"""Long-form transcription: up to ~20 minutes of audio through ONE decoder context, clip by clip.

The shape follows openai/whisper's transcribe.py: cut the audio into clips, and for each clip ask the model for
its transcript with the transcript so far in context, emitting a timestamped segment per clip. The difference
is that the context is the omni model's own decoder sequence: every clip's audio tokens and every answer stay
in it, so the model hears the whole meeting (names, topics) and the final summary is one more turn of the same
conversation.

How the context survives between decoder jobs (the choice, and why):
  The decoder is shared by every client, so a meeting must not hold it for 20 minutes: each clip is its own
  scheduler job (`transcribe` takes a `run` function that submits one), and other requests run between clips.
  The next clip's job must find the meeting's sequence again. Options were (a) extend() the live sequence and
  snapshot it, or (b) re-prefill the whole chain and let the prompt cache make the prefix free. (a) does not
  work across jobs: the generated tokens are in the sequence but not in the session's key chain, so a
  snapshot after generation would be stored under a key that a later prompt cannot name. So (b): the meeting
  is kept as an explicit segment chain (the first turn, then for each clip: the previous answer as text, the
  continuation turn with the clip), and every clip is one `prefill` of that chain whose last boundary is a
  cache point. The prefill restores the snapshot saved at the end of the previous clip's prompt and
  evaluates only the previous answer (re-read as text, ~100 tokens) and the new clip. Cost per clip: one
  snapshot restore and one save; the older snapshot is dropped right after, so the cache holds one entry per
  live meeting and memory stays flat. The same path serves a file (jobs back to back) and a live recording
  (jobs as clips arrive), and any clip can be followed by the summary turn.

Windows: when the next clip would not fit the context (with room left for its answer and the summary), a new
window starts: a fresh prompt whose first clip re-hears the tail of the previous clip (`overlap_clip`), and the
words heard twice are removed with `merge_overlap`. A 20-minute meeting with Parakeet (~13 tokens/s, ~16k
audio tokens) fits one 32k window; longer ones roll over.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from omnid.modalities.audio_clips import Clip, merge_overlap, overlap_clip, padded
from omnid.modalities.audio_io import audio_segment
from omnid.modalities.decoder import Decoder, Generated, Prefilled, Prompt, RunOnDecoder, SamplingParams, SnapshotCache
from omnid.models.base import AudioSegment, InputError, Segment, TextSegment, require

SYSTEM = ("You transcribe meetings. For each audio clip, write exactly what is said in it, verbatim, "
          "continuing the transcript so far. Write only the transcript.")
INSTRUCTION = "Transcribe this clip."
SUMMARY_INSTRUCTION = ("Summarise the meeting so far in a few sentences, then list its action items, one per line, "
                       "each with its owner when one was named.")


@dataclass(frozen=True)
class TranscriptSegment:
    start: float
    end: float
    text: str


@dataclass
class TranscribeSettings:
    """How a meeting is transcribed. Zero/empty values are resolved against the model in `Transcript`."""

    max_tokens_per_clip: int = 160     # ~2x the words of 30 s of fast speech
    summary_max_tokens: int = 512
    summary: bool = False
    overlap_seconds: float = 4.0
    language: str = ""
    system: str = SYSTEM
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def instruction(self) -> str:
        return INSTRUCTION if not self.language else f"{INSTRUCTION} The language is {self.language}."


@dataclass
class TranscriptUsage:
    prompt_tokens: int = 0       # tokens in every window's final prompt, summed
    cached_tokens: int = 0       # of those, restored from the prompt cache rather than evaluated
    generated_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    first_token_ms: float = 0.0  # the first clip's time to first token


@dataclass
class Transcript:
    """One meeting's transcription state, carried from one decoder job to the next (never used concurrently)."""

    settings: TranscribeSettings
    segments: list[TranscriptSegment] = field(default_factory=list)
    usage: TranscriptUsage = field(default_factory=TranscriptUsage)
    summary: str = ""
    windows: int = 0
    # The current window: its prompt chain up to the last clip's turn, the last answer (not yet in the chain),
    # the tokens it holds, and the cache key of the last snapshot (dropped when superseded).
    _chain: Prompt | None = None
    _answer: str = ""
    _window_tokens: int = 0
    _evaluated_in_window: int = 0
    _last_key: str = ""
    _last_clip: Clip | None = None
    # Token counts: windows already closed, and the current window's prompt.
    _closed_prompt: int = 0
    _closed_evaluated: int = 0
    _window_prompt: int = 0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def end(self) -> float:
        return self.segments[-1].end if self.segments else 0.0


def transcribe(clips: Iterable[Clip], run: RunOnDecoder, transcript: Transcript) -> Iterator[TranscriptSegment]:
    """Transcribe clips in order, one decoder job each, yielding a timestamped segment per clip.

    The summary, when asked for, is a separate call (`summarise`) so a live meeting can ask for it at stop.
    """
    for clip in clips:
        segment = run(lambda session: transcribe_clip(session, transcript, clip))
        yield segment
    if not transcript.segments:
        raise InputError("the audio has no samples")


def transcribe_clip(session: Decoder, transcript: Transcript, clip: Clip) -> TranscriptSegment:
    """One clip: put the meeting's chain plus this clip's turn in the sequence, generate its transcript."""
    s = transcript.settings
    turn = _turn(session, clip, s)
    overlap = 0.0
    if transcript._chain is not None and (not _fits(session, transcript, turn)
                                          or not session.cache.contains(transcript._last_key)):
        # Full, or the meeting's snapshot is gone (evicted, or the daemon restarted): the chain's audio was
        # let go of (see _forget_audio), so the meeting goes on in a new window.
        # The new window re-hears the tail of the previous clip so the sentence in progress has its context.
        assert transcript._last_clip is not None
        limit = clip.seconds + s.overlap_seconds
        if session.info.max_audio_clip_seconds:
            limit = min(limit, session.info.max_audio_clip_seconds)
        clip_with_tail = overlap_clip(transcript._last_clip, clip, s.overlap_seconds, max_seconds=limit)
        overlap = (clip.start - clip_with_tail.start) / clip_with_tail.seconds
        transcript._chain = None
        turn = _turn(session, clip_with_tail, s)
    if transcript._chain is None:
        _close_window(transcript)
        prompt = session.build_prompt(turn, s.system)
        transcript.windows += 1
    else:
        prompt = transcript._chain + Prompt((TextSegment(transcript._answer),)) + session.continue_prompt(turn)
    # Snapshot at the end of this turn (the next clip restores it) and, in a first turn, after the system text
    # (every meeting shares it); not after the clip's audio, which nothing else will ever start with.
    keep = {min(prompt.cache_points)} if transcript._chain is None and prompt.cache_points else set()
    prompt = Prompt(prompt.segments, frozenset(keep | {len(prompt.segments)}))
    stats = session.prefill(prompt, checkpoints=False)  # the meeting resumes from its own turn ends only
    _drop_snapshot(session.cache, transcript)
    transcript._last_key = stats.prefix_key
    prompt = _forget_audio(prompt)
    result = session.generate(s.max_tokens_per_clip, s.sampling)

    text = result.text.strip()
    if overlap > 0:
        text = merge_overlap(transcript.text, text, overlap)
    segment = TranscriptSegment(start=max(clip.start, transcript.end), end=clip.end, text=text)
    transcript.segments.append(segment)
    transcript._chain, transcript._answer, transcript._last_clip = prompt, result.text, clip
    transcript._window_tokens = stats.prompt_tokens + result.generated_tokens
    _account(transcript, stats, result)
    return segment


def summarise(session: Decoder, transcript: Transcript, on_delta: Callable[[str], None] = lambda _: None) -> str:
    """The summary with action items: one more turn of the same context, or (after several windows) a prompt
    holding the whole transcript as text, which is far smaller than its audio."""
    s = transcript.settings
    ask = [TextSegment(SUMMARY_INSTRUCTION)]
    if transcript._chain is not None and transcript.windows == 1 and session.cache.contains(transcript._last_key):
        prompt = transcript._chain + Prompt((TextSegment(transcript._answer),)) + session.continue_prompt(ask)
    else:
        prompt = session.build_prompt([TextSegment("Transcript:\n" + transcript.text), *ask], s.system)
        _close_window(transcript)
    stats = session.prefill(prompt, save=False)
    result = session.generate(s.summary_max_tokens, s.sampling, on_delta)
    transcript.summary = result.text.strip()
    _account(transcript, stats, result)
    return transcript.summary


def finish(cache: SnapshotCache, transcript: Transcript) -> None:
    """Forget the meeting's last snapshot: nothing will continue from it (the cache is thread-safe, so this
    needs no decoder job)."""
    _close_window(transcript)
    _drop_snapshot(cache, transcript)


# -- helpers ---------------------------------------------------------------------------------------------------


def _turn(session: Decoder, clip: Clip, s: TranscribeSettings) -> list[Segment]:
    """The clip resampled to the encoder's rate (inside the pipeline, never in the backend) and the instruction."""
    require(session.info, "audio", "transcribe")
    audio: AudioSegment = audio_segment(padded(clip.pcm, clip.rate), clip.rate, session.info.audio_sample_rate)
    return [audio, TextSegment(s.instruction())]


def _fits(session: Decoder, transcript: Transcript, turn: list[Segment]) -> bool:
    """Whether the next clip's turn, its answer and the summary still fit the current window."""
    s = transcript.settings
    need = sum(session.count_tokens(seg) for seg in turn) + session.count_tokens(TextSegment(transcript._answer))
    need += 16 + s.max_tokens_per_clip  # template pieces around the turn, then the answer
    if s.summary:
        need += session.count_tokens(TextSegment(SUMMARY_INSTRUCTION)) + 16 + s.summary_max_tokens
    return transcript._window_tokens + need <= session.info.context_length


def _account(transcript: Transcript, stats: Prefilled, result: Generated) -> None:
    """Usage so far. Each prefill of a window restores the previous one's end and evaluates the rest, so a
    window's prompt is its last prefill's length and its cached tokens are those that were in the cache before
    the window started (a shared system text): the sum of evaluated tokens says which."""
    transcript._window_prompt = stats.prompt_tokens
    transcript._evaluated_in_window += stats.prompt_tokens - stats.cached_tokens
    u = transcript.usage
    u.generated_tokens += result.generated_tokens
    u.prefill_ms += stats.prefill_ms
    u.decode_ms += result.decode_ms
    if not u.first_token_ms:
        u.first_token_ms = result.time_to_first_token_ms
    u.prompt_tokens = transcript._closed_prompt + transcript._window_prompt
    u.cached_tokens = max(0, u.prompt_tokens - transcript._closed_evaluated - transcript._evaluated_in_window)


def _close_window(transcript: Transcript) -> None:
    """Fold the current window's token counts into the closed windows' totals."""
    transcript._closed_prompt += transcript._window_prompt
    transcript._closed_evaluated += transcript._evaluated_in_window
    transcript._window_prompt = transcript._evaluated_in_window = 0


@dataclass(frozen=True)
class _Heard:
    """An audio segment already in the meeting's snapshot, kept by its digest only.

    The chain is re-prefilled for every clip, but only its last turn is ever evaluated: the rest is restored
    from the snapshot. Keeping every clip's samples would grow memory with the meeting (77 MB for 20 minutes
    at 16 kHz) and re-hash all of it per clip, so past audio is replaced by its digest. Such a segment is
    never evaluated: when the snapshot is missing the meeting starts a new window instead (transcribe_clip).
    """

    key: str
    kind: str = "audio"

    def digest(self) -> str:
        return self.key


def _forget_audio(prompt: Prompt) -> Prompt:
    segments = tuple(_Heard(seg.digest()) if isinstance(seg, AudioSegment) else seg for seg in prompt.segments)
    return Prompt(segments, prompt.cache_points)  # type: ignore[arg-type]


def _drop_snapshot(cache: SnapshotCache, transcript: Transcript) -> None:
    if transcript._last_key:
        cache.drop(transcript._last_key)
        transcript._last_key = ""

