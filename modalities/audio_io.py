"""Decoding client audio into mono float32 PCM at the encoder's rate.

Every audio input (a file, raw PCM from a client, a microphone block) ends up here, so resampling and
channel mixing happen in one place, in the pipeline, never in the backend. libsndfile (through soundfile)
decodes WAV, FLAC, OGG and MP3 in memory.
"""
from __future__ import annotations

import io
import math
import os
from typing import BinaryIO, Iterator

import numpy as np
import soundfile

from omnid.models.base import AudioSegment, InputError

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8


def pcm_from_f32le(raw: bytes, sample_rate: int, channels: int) -> np.ndarray:
    """Interpret little-endian float32 interleaved PCM bytes as mono samples."""
    channels = channels or 1
    _check_rate(sample_rate)
    if not 1 <= channels <= MAX_CHANNELS:
        raise InputError(f"PCM must have 1..{MAX_CHANNELS} channels, got {channels}")
    if len(raw) % (4 * channels):
        raise InputError(f"PCM length {len(raw)} is not a whole number of float32 frames of {channels} channels")
    samples = np.frombuffer(raw, dtype="<f4").reshape(-1, channels)
    for start in range(0, len(samples), STREAM_BLOCK_FRAMES):  # block by block: no whole-length temporary
        if not np.isfinite(samples[start:start + STREAM_BLOCK_FRAMES]).all():
            raise InputError("PCM contains NaN or infinite samples")
    return to_mono(samples)


def pcm_seconds(raw_bytes: int, sample_rate: int, channels: int) -> float:
    """How long f32le PCM of this many bytes lasts, known before it is read (for check_fits)."""
    return raw_bytes / (4 * max(1, channels)) / sample_rate if sample_rate > 0 else 0.0


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels (frames x channels) into one float32 channel."""
    if samples.ndim == 2:  # one channel is a view, not a copy (230 MB of PCM stays 230 MB)
        samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Resample mono audio by band-limited FFT resampling (exact length rate_to/rate_from * n).

    The signal is zero-padded to a length whose FFT is fast (a multiple of rate_from/gcd whose other factors
    are 2, 3, 5 and 7) and the output cut back: an arbitrary 30 s clip at 44.1 kHz can have a large prime
    factor and take ~50x longer, and the silence appended also keeps the end from wrapping onto the start.
    Long recordings are cut into clips first (audio_clips); this whole-array form is for clips.
    """
    if rate_from == rate_to or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    n_out = int(round(len(samples) * rate_to / rate_from))
    g = math.gcd(rate_from, rate_to)
    step_in, step_out = rate_from // g, rate_to // g
    m = _smooth_at_least(-(-len(samples) // step_in))
    n_in_padded, n_out_padded = m * step_in, m * step_out
    spectrum = np.fft.rfft(samples.astype(np.float64), n_in_padded)
    n_keep = min(len(spectrum), n_out_padded // 2 + 1)
    out = np.fft.irfft(spectrum[:n_keep], n_out_padded)[:n_out] * (n_out_padded / n_in_padded)
    return out.astype(np.float32)


def _smooth_at_least(n: int) -> int:
    """The smallest integer >= n whose only prime factors are 2, 3, 5 and 7."""
    best = 1 << max(0, (n - 1).bit_length())
    f7 = 1
    while f7 < best:
        f5 = f7
        while f5 < best:
            f3 = f5
            while f3 < best:
                f2 = f3
                while f2 < n:
                    f2 *= 2
                best = min(best, f2)
                f3 *= 3
            f5 *= 5
        f7 *= 7
    return best


def audio_segment(samples: np.ndarray, rate: int, target_rate: int) -> AudioSegment:
    """Resample mono samples to the encoder's rate and wrap them as a segment."""
    if len(samples) == 0:
        raise InputError("the audio has no samples")
    return AudioSegment(resample(samples, rate, target_rate), target_rate)


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"unsupported sample rate {rate} Hz (supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")


#: Frames read from a file per block when streaming it (1 s at 48 kHz): memory stays bounded by the clip
#: being cut, never by the length of the recording.
STREAM_BLOCK_FRAMES = 48_000


class AudioStream:
    """An audio file (a path or encoded bytes) read block by block as mono float32, with its rate and length.

    A 20-minute 48 kHz stereo file is 460 MB as float32: transcription reads it in blocks and cuts clips as
    it goes instead of decoding it whole. Opening validates the header (format, rate, length) at once so a
    bad file is refused before any decoder work is queued.
    """

    def __init__(self, source: bytes | str | os.PathLike[str] | BinaryIO) -> None:
        """`source`: encoded bytes, a path, or an open binary file, which the stream then owns (it is closed
        with the stream): that is how a file checked through its descriptor is read without opening it again."""
        if isinstance(source, (bytes, bytearray)) and not source:
            raise InputError("the audio is empty")
        self._owned: BinaryIO | None = None
        opened: BinaryIO | str
        if isinstance(source, (bytes, bytearray)):
            opened = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            opened = os.fspath(source)
        else:
            opened = self._owned = source
        try:
            self._file = soundfile.SoundFile(opened)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            self._close_owned()
            raise InputError(f"the audio could not be decoded (WAV, FLAC, OGG and MP3 are supported): "
                             f"{_reason(exc)}") from None
        self.rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        try:
            _check_rate(self.rate)
            if not 1 <= self.channels <= MAX_CHANNELS:
                raise InputError(f"audio must have 1..{MAX_CHANNELS} channels, got {self.channels}")
            #: "WAV", "FLAC", "MP3", "OGG"...: the container, to keep an upload under the right extension.
            self.format = str(self._file.format)
            # MP3/OGG report an estimate; the blocks are the truth, but a header that says "no frames" is final.
            self.frames = max(0, int(self._file.frames))
            if self.frames == 0:
                raise InputError("the audio has no samples")
        except InputError:
            self.close()
            raise

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def blocks(self, block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Mono float32 blocks until the end of the file; a file cut short or corrupt mid-way is an InputError."""
        try:
            while True:
                try:
                    block = self._file.read(block_frames, dtype="float32", always_2d=True)
                except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
                    raise InputError(f"the audio is corrupt after {self._file.tell() / self.rate:.1f} s: "
                                     f"{_reason(exc)}") from None
                if len(block) == 0:
                    return
                if not np.all(np.isfinite(block)):
                    raise InputError("the audio contains NaN or infinite samples")
                yield to_mono(block)
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()
        self._close_owned()

    def _close_owned(self) -> None:
        if self._owned is not None:
            self._owned.close()


def _reason(exc: Exception) -> str:
    """libsndfile's own words ("Format not recognised."), without soundfile's "Error opening <_io.BytesIO object
    at 0x7f...>: " in front: a heap address in a status message says nothing to the client."""
    return getattr(exc, "error_string", "") or str(exc)


def pcm_blocks(samples: np.ndarray, block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """An in-memory mono signal as the same kind of block stream an AudioStream gives."""
    for start in range(0, len(samples), block_frames):
        yield samples[start:start + block_frames]
