"""Decoding client audio into mono float32 PCM at the encoder's rate.

Every audio input (a file, raw PCM from a client, a microphone block) ends up here, so resampling and
channel mixing happen in one place, in the pipeline, never in the backend. libsndfile (through soundfile)
decodes WAV, FLAC, OGG and MP3 in memory.
"""
from __future__ import annotations

import io

import numpy as np
import soundfile

from omnid.models.base import AudioSegment, InputError

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an encoded audio file to (mono float32 samples, sample rate)."""
    if not data:
        raise InputError("the audio is empty")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"the audio could not be decoded (WAV, FLAC, OGG and MP3 are supported): {exc}") from None
    _check_rate(rate)
    return to_mono(samples), rate


def pcm_from_f32le(raw: bytes, sample_rate: int, channels: int) -> np.ndarray:
    """Interpret little-endian float32 interleaved PCM bytes as mono samples."""
    channels = channels or 1
    _check_rate(sample_rate)
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"PCM must have 1..{MAX_CHANNELS} channels, got {channels}")
    if len(raw) % (4 * channels):
        raise InputError(f"PCM length {len(raw)} is not a whole number of float32 frames of {channels} channels")
    samples = np.frombuffer(raw, dtype="<f4").reshape(-1, channels)
    if not np.all(np.isfinite(samples)):
        raise InputError("PCM contains NaN or infinite samples")
    return to_mono(samples)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels (frames x channels) into one float32 channel."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(samples: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Resample mono audio by band-limited FFT resampling (exact length rate_to/rate_from * n).

    Long recordings are resampled in blocks by callers that stream; this whole-array form is for clips.
    """
    if rate_from == rate_to or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    n_out = int(round(len(samples) * rate_to / rate_from))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    n_keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:n_keep], n_out) * (n_out / len(samples))
    return out.astype(np.float32)


def audio_segment(samples: np.ndarray, rate: int, target_rate: int) -> AudioSegment:
    """Resample mono samples to the encoder's rate and wrap them as a segment."""
    if len(samples) == 0:
        raise InputError("the audio has no samples")
    return AudioSegment(resample(samples, rate, target_rate), target_rate)


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"unsupported sample rate {rate} Hz (supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
