"""The clip cutter, the overlap merge and streaming audio reading, on real speech (espeak-ng) and real files."""
from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio_fixtures import speech_wav
from omnid.modalities.audio_clips import (ClipCutter, clip_seconds, cut_stream, merge_overlap, overlap_clip,
                                          quiet_point)
from omnid.modalities.audio_io import AudioStream, pcm_blocks
from omnid.models.base import InputError

RATE = 16_000


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("speech"), 120)


def _rms(pcm: np.ndarray, at: int, half: int) -> float:
    return float(np.sqrt(np.mean(np.square(pcm[max(0, at - half):at + half]))))


def test_clips_of_real_speech_are_contiguous_bounded_and_cut_where_it_is_quiet(speech: Path) -> None:
    stream = AudioStream(speech)
    pcm, _ = soundfile.read(speech, dtype="float32")
    clips = list(cut_stream(stream.blocks(), stream.rate, 20.0))
    assert clips[0].start_sample == 0
    for a, b in zip(clips, clips[1:]):
        assert a.start_sample + len(a.pcm) == b.start_sample          # nothing lost, nothing repeated
    assert clips[-1].start_sample + len(clips[-1].pcm) == len(pcm)
    assert all(12.0 - 0.02 <= c.seconds <= 20.0 for c in clips[:-1])   # within [(1 - 0.4) * max, max]
    speech_level = float(np.sqrt(np.mean(np.square(pcm))))
    for c in clips[1:]:
        # Every cut lies in a stretch (100 ms around it) far quieter than the speech on average.
        assert _rms(pcm, c.start_sample, RATE // 20) < 0.25 * speech_level
    assert np.array_equal(np.concatenate([c.pcm for c in clips]), pcm)


def test_quiet_point_finds_the_gap_between_two_bursts() -> None:
    t = np.arange(3 * RATE) / RATE
    pcm = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    pcm[int(1.7 * RATE):int(1.9 * RATE)] = 0.0
    cut = quiet_point(pcm, RATE, RATE, 3 * RATE)
    assert int(1.7 * RATE) <= cut <= int(1.9 * RATE)


def test_cutter_memory_stays_bounded_by_one_clip() -> None:
    """20 minutes fed block by block: the cutter holds at most about one clip, not the recording."""
    rng = np.random.default_rng(0)
    block = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    cutter = ClipCutter(RATE, 30.0)
    tracemalloc.start()
    n = 0
    for _ in range(20 * 60):
        n += sum(len(c.pcm) for c in cutter.feed(block))
    n += sum(len(c.pcm) for c in cutter.finish())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 20 * 60 * RATE
    assert peak < 4 * 31 * RATE * 4   # a few clip-sized float32 buffers (~2 MB each), not 77 MB


def test_clip_length_is_bounded_by_the_encoder_and_the_token_budget() -> None:
    assert clip_seconds(30, None, 0, 0) == 30
    assert clip_seconds(30, 20.0, 0, 0) == 20                 # whisper-style or mlx-vlm limit
    assert clip_seconds(30, 400.0, 12.5, 250) == 20           # 250 tokens at 12.5 tokens/s
    with pytest.raises(ValueError):
        clip_seconds(30, 0.5, 0, 0)


def test_overlap_clip_prepends_the_previous_tail_within_the_limit(speech: Path) -> None:
    clips = list(cut_stream(AudioStream(speech).blocks(), RATE, 20.0))
    joined = overlap_clip(clips[0], clips[1], overlap_seconds=4.0, max_seconds=clips[1].seconds + 4.0)
    assert clips[1].start - 4.0 <= joined.start < clips[1].start - 1.0
    assert joined.end == clips[1].end and joined.seconds <= clips[1].seconds + 4.0
    tight = overlap_clip(clips[0], clips[1], overlap_seconds=4.0, max_seconds=clips[1].seconds)
    assert tight is clips[1]   # no room under the encoder's limit: no overlap


@pytest.mark.parametrize("previous, new, fraction, expected", [
    ("we agreed to ship the release next week", "the release next week and alice owns testing", 0.4,
     "and alice owns testing"),
    ("We agreed to ship the Release, next week.", "release next week. Bob writes the docs", 0.4,
     "Bob writes the docs"),
    ("nothing in common here", "completely different words follow now", 0.2, "different words follow now"),
    ("", "first words", 0.5, "words"),
    ("anything", "", 0.5, ""),
])
def test_merge_overlap_drops_exactly_the_words_heard_twice(previous: str, new: str, fraction: float,
                                                           expected: str) -> None:
    assert merge_overlap(previous, new, fraction) == expected


def test_audio_stream_reads_flac_stereo_44k_and_mp3(tmp_path: Path, speech: Path) -> None:
    pcm, _ = soundfile.read(speech, dtype="float32", frames=10 * RATE)
    stereo = np.stack([pcm, pcm], axis=1)
    for fmt in ("FLAC", "MP3"):
        out = io.BytesIO()
        soundfile.write(out, stereo, 44_100 if fmt == "FLAC" else RATE, format=fmt)
        stream = AudioStream(out.getvalue())
        assert stream.format == fmt and stream.channels == 2
        total = sum(len(b) for b in stream.blocks())
        assert abs(total - stream.frames) <= 2048


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not audio at all" * 10, "could not be decoded"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00"
     b"\x10\x00data\x00\x00\x00\x00", "no samples"),
])
def test_bad_audio_is_a_clear_input_error(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        AudioStream(data)


def test_unsupported_sample_rate_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(1000, np.float32), 4000, format="WAV")
    with pytest.raises(InputError, match="sample rate"):
        AudioStream(out.getvalue())


def test_pcm_blocks_cover_the_signal() -> None:
    x = np.arange(100_001, dtype=np.float32)
    assert np.array_equal(np.concatenate(list(pcm_blocks(x, 30_000))), x)


def test_resample_is_exact_in_length_and_accurate_on_awkward_lengths() -> None:
    from omnid.modalities.audio_io import resample
    t = np.arange(44_100 * 2 + 17) / 44_100                       # a length with a large prime factor
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(x, 44_100, RATE)
    assert len(y) == round(len(x) * RATE / 44_100)
    t2 = np.arange(len(y)) / RATE
    assert np.abs(y[800:-800] - np.sin(2 * np.pi * 440 * t2[800:-800])).max() < 1e-3
