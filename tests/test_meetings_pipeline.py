"""Long-form transcription through the real llama.cpp + Parakeet path of the tiny random-weight model, in-process.

Random weights: nothing here looks at wording. Assertions are on segments (count, timestamps monotone and
covering the audio), token usage, the prompt cache (one entry per meeting, dropped at the end), windows and
memory. The 20-minute test is the slowest test of the suite on purpose (~20 s on 2 cores): it is the claim.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from audio_fixtures import speech_wav  # noqa: E402
from omnid.daemon.prompt_cache import PromptCache  # noqa: E402
from omnid.daemon.session import DecoderSession  # noqa: E402
from omnid.modalities import meetings  # noqa: E402
from omnid.modalities.audio_clips import cut_stream  # noqa: E402
from omnid.modalities.audio_io import AudioStream  # noqa: E402
from omnid.models.base import AudioSegment, InputError  # noqa: E402
from omnid.models.gguf_test_model import TestModelPaths  # noqa: E402
from omnid.models.llama_cpp_backend import LlamaCppBackend  # noqa: E402


def _runner(backend: LlamaCppBackend, cache: PromptCache):
    """Each call is a fresh DecoderSession, as each scheduler job gets one."""
    return lambda fn: fn(DecoderSession(backend, cache, lambda: False))


def _transcribe(backend, path: Path, settings: meetings.TranscribeSettings, clip_s: float = 30.0,
                on_segment=lambda t: None):
    cache = PromptCache(backend.info.fingerprint, 1 << 30)
    stream = AudioStream(path)
    transcript = meetings.Transcript(settings)
    for _ in meetings.transcribe(cut_stream(stream.blocks(), stream.rate, clip_s), _runner(backend, cache),
                                 transcript):
        on_segment(transcript)
    if settings.summary:
        _runner(backend, cache)(lambda s: meetings.summarise(s, transcript))
    meetings.finish(cache, transcript)
    return transcript, cache, stream.seconds


def _check_timeline(transcript: meetings.Transcript, seconds: float) -> None:
    segs = transcript.segments
    assert segs[0].start == 0.0
    for a, b in zip(segs, segs[1:]):
        assert a.end == pytest.approx(b.start, abs=1e-6) and a.start < a.end
    assert segs[-1].end == pytest.approx(seconds, abs=1e-3)


def test_twenty_minutes_of_speech_through_one_decoder_context(tmp_path_factory, test_model: TestModelPaths) -> None:
    wav = speech_wav(tmp_path_factory.mktemp("speech20"), 20 * 60)
    # Flash attention: without it llama.cpp's attention scratch (n_ubatch x n_kv x heads floats) grows with the
    # context in use up to its n_ctx bound, which would hide what this test measures: the pipeline's memory.
    backend = LlamaCppBackend(test_model.text, test_model.mmproj, n_ctx=20_480, n_threads=1, flash_attn=True)
    held: list[float] = []  # MB of Python/numpy memory alive after each segment
    tracemalloc.start()
    try:
        settings = meetings.TranscribeSettings(max_tokens_per_clip=4, summary=True, summary_max_tokens=8)
        transcript, cache, seconds = _transcribe(
            backend, wav, settings, on_segment=lambda t: held.append(tracemalloc.get_traced_memory()[0] / 2**20))
    finally:
        tracemalloc.stop()
        backend.close()
    assert seconds > 19 * 60
    assert transcript.windows == 1                                     # one decoder context for all of it
    assert 40 <= len(transcript.segments) <= 67                        # 18..30 s clips
    _check_timeline(transcript, seconds)
    u = transcript.usage
    # ~12.5 audio tokens per second of sound, all in one prompt, plus the turns' text.
    assert 12 * seconds < u.prompt_tokens < 20_480
    assert 0 < u.generated_tokens <= 4 * len(transcript.segments) + 8
    assert cache.stats().entries <= 2                                  # the meeting's snapshot was dropped
    # Memory is flat: past clips' samples are not kept (the chain holds their digests only), and from the first
    # quarter of the meeting to its end what stays alive grows by no more than the meeting's one decoder
    # snapshot (~9 MB at 19k tokens of this model), never by the audio (77 MB for 20 minutes). Measured as
    # traced allocations, not RSS: in a shared test process RSS also counts what malloc keeps after frees.
    assert not any(isinstance(seg, AudioSegment) for seg in transcript._chain.segments)
    quarter = held[len(held) // 4]
    assert max(held) - quarter < 24, (quarter, max(held))


def test_a_long_meeting_rolls_over_into_overlapping_windows(tmp_path_factory, test_model: TestModelPaths) -> None:
    wav = speech_wav(tmp_path_factory.mktemp("speech3"), 180)
    backend = LlamaCppBackend(test_model.text, test_model.mmproj, n_ctx=1024, n_threads=1)
    try:
        settings = meetings.TranscribeSettings(max_tokens_per_clip=4, overlap_seconds=4.0)
        transcript, cache, seconds = _transcribe(backend, wav, settings, clip_s=20.0)
    finally:
        backend.close()
    assert transcript.windows >= 3                     # ~2,300 audio tokens cannot fit 1,024
    _check_timeline(transcript, seconds)               # the overlap is heard twice but timestamped once
    assert transcript.usage.prompt_tokens > 12 * seconds
    assert cache.stats().entries <= 2


def test_audio_shorter_than_a_second_and_nothing_at_all(test_model: TestModelPaths) -> None:
    import numpy as np
    from omnid.modalities.audio_clips import Clip
    backend = LlamaCppBackend(test_model.text, test_model.mmproj, n_ctx=2048, n_threads=1)
    try:
        cache = PromptCache(backend.info.fingerprint, 1 << 28)
        t = meetings.Transcript(meetings.TranscribeSettings(max_tokens_per_clip=2))
        tiny = Clip(np.zeros(800, np.float32), 16_000, 0)              # 50 ms: padded to 1 s for the encoder
        segs = list(meetings.transcribe([tiny], _runner(backend, cache), t))
        assert [(s.start, s.end) for s in segs] == [(0.0, 0.05)]
        with pytest.raises(InputError, match="no samples"):
            list(meetings.transcribe([], _runner(backend, cache), meetings.Transcript(meetings.TranscribeSettings())))
    finally:
        backend.close()


def test_a_model_without_an_audio_encoder_is_unsupported(tmp_path: Path, test_model: TestModelPaths) -> None:
    import numpy as np
    from omnid.modalities.audio_clips import Clip
    backend = LlamaCppBackend(test_model.text, None, n_ctx=512, n_threads=1)
    try:
        cache = PromptCache(backend.info.fingerprint, 1 << 26)
        clip = Clip(np.zeros(16_000, np.float32), 16_000, 0)
        with pytest.raises(InputError) as err:
            transcript = meetings.Transcript(meetings.TranscribeSettings())
            list(meetings.transcribe([clip], _runner(backend, cache), transcript))
        assert err.value.unsupported and "no audio encoder" in str(err.value)
    finally:
        backend.close()
