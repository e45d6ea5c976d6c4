"""Live capture from a microphone, spooled to disk as it is captured, with pause / resume / stop.

Nothing lost: PortAudio's callback only copies each block into a queue (it must never block or touch the
disk); a writer thread appends the blocks to a WAV spool and, at least once a second, flushes it and rewrites
the header's sizes, so the spool is a valid WAV file at every moment and a crash, a kill or a pulled USB
microphone loses at most the last second. The same thread hands the blocks to the transcriber (`blocks()`),
so what is transcribed is exactly what is on disk.

The spool is 16-bit PCM at the capture rate (the encoder's rate when the device takes it: PulseAudio and
most devices do; the device's own rate otherwise, resampled later per clip by the pipeline).
"""
from __future__ import annotations

import errno
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from omnid.models.base import InputError

#: How often the spool is flushed and its header rewritten: the most a crash can lose.
FLUSH_SECONDS = 1.0
BLOCK_SECONDS = 0.1


class NoInputDevice(InputError):
    """No microphone, or not the one asked for: FAILED_PRECONDITION (the request is fine, the machine lacks it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unsupported=True)


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel does not bundle PortAudio on Linux
        raise NoInputDevice(f"audio capture is unavailable: {exc} (install libportaudio2)") from None
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    max_input_channels: int
    default_sample_rate: float
    is_default: bool


def input_devices() -> list[InputDevice]:
    """The devices that can record, as PortAudio sees them now."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except sd.PortAudioError as exc:
        raise NoInputDevice(f"cannot list audio devices: {exc}") from None
    return [InputDevice(i, d["name"], d["max_input_channels"], float(d["default_samplerate"]), i == default_in)
            for i, d in enumerate(devices) if d["max_input_channels"] > 0]


def resolve_device(device: str) -> int | None:
    """A device index from an index or a (case-insensitive substring of a) name; None = the default input."""
    devices = input_devices()
    if not devices:
        raise NoInputDevice("no audio input device is available")
    if not device:
        if not any(d.is_default for d in devices):
            return devices[0].index
        return None
    if device.isdigit():
        if any(d.index == int(device) for d in devices):
            return int(device)
        raise NoInputDevice(f"no input device with index {device}; see `omni meeting devices`")
    matches = [d for d in devices if device.casefold() in d.name.casefold()]
    exact = [d for d in matches if d.name.casefold() == device.casefold()]
    if exact or len(matches) == 1:
        return (exact or matches)[0].index
    if not matches:
        raise NoInputDevice(f"no input device named {device!r}; see `omni meeting devices`")
    raise NoInputDevice(f"{device!r} matches several devices: {', '.join(d.name for d in matches)}")


class WavSpool:
    """A 16-bit mono WAV file that is valid after every `sync()` (header sizes rewritten, data flushed).

    Written without a buffer, so `frames` is what is on disk: when the disk fills, `write` raises and the file
    is cut back to the last whole frame, its header saying so (`keep_what_was_written`) - a full disk ends a
    recording with everything recorded until then, playable.
    """

    _HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.frames = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._write_all(self._header(), 0)
        except BaseException:
            os.close(self._fd)
            path.unlink(missing_ok=True)
            raise

    def write(self, samples: np.ndarray) -> None:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        offset = self._HEADER.size + self.frames * 2
        try:
            self._write_all(pcm, offset)
        except OSError:
            self.keep_what_was_written()
            raise
        self.frames += len(pcm) // 2

    def sync(self) -> None:
        self._write_all(self._header(), 0)  # overwrites bytes already there: needs no new space on disk
        os.fsync(self._fd)

    def keep_what_was_written(self) -> None:
        """After a failed write: cut off the part of the block that made it, so the file holds exactly the
        frames written before (those the transcriber was given), and fix the header. Best effort (the disk is
        full): what fails here leaves the last synced header, which still describes a playable prefix."""
        try:
            os.ftruncate(self._fd, self._HEADER.size + self.frames * 2)
            self.sync()
        except OSError:
            pass

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

    def _header(self) -> bytes:
        data = self.frames * 2
        return self._HEADER.pack(b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, self.rate, self.rate * 2, 2, 16,
                                 b"data", data)

    def _write_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view, offset = view[written:], offset + written


class Recorder:
    """Records one input device into a WAV spool; `blocks()` yields what was recorded, until stop().

    States: "recording", "paused", "stopped". While paused, captured audio is dropped (neither spooled nor
    transcribed), so the spool and the transcript's timeline hold only the recorded stretches.
    """

    def __init__(self, spool_path: Path, device: str = "", rate: int = 16_000, max_seconds: float = 0.0) -> None:
        sd = _sounddevice()
        index = resolve_device(device)
        info = sd.query_devices(index if index is not None else sd.default.device[0])
        try:
            sd.check_input_settings(device=index, channels=1, samplerate=rate, dtype="float32")
        except (sd.PortAudioError, ValueError):
            rate = int(info["default_samplerate"])
        self.device_name = str(info["name"])
        self.rate = rate
        self.max_frames = int(max_seconds * rate) if max_seconds > 0 else 0
        self.spool = WavSpool(spool_path, rate)
        self.state = "recording"
        self.error: str = ""
        #: Why the spool could not be written (a full disk): the recording stopped there, the spool holds what
        #: came before.
        self.write_error: OSError | None = None
        self._captured: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._out: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        try:
            self._stream = sd.InputStream(device=index, channels=1, samplerate=rate, dtype="float32",
                                          blocksize=int(rate * BLOCK_SECONDS), callback=self._callback,
                                          finished_callback=self._finished)
        except (sd.PortAudioError, ValueError) as exc:
            self.spool.close()
            raise NoInputDevice(f"cannot open input device {self.device_name!r}: {exc}") from None
        self._writer = threading.Thread(target=self._write_loop, name="omnid-spool", daemon=True)
        self._writer.start()
        self._stream.start()

    @property
    def recorded_seconds(self) -> float:
        return self.spool.frames / self.rate

    def pause(self) -> None:
        with self._lock:
            if self.state == "recording":
                self.state = "paused"

    def resume(self) -> None:
        with self._lock:
            if self.state == "paused":
                self.state = "recording"

    def stop(self) -> None:
        """Stop capturing; the spool is complete and closed once the writer has drained (blocks() ends)."""
        with self._lock:
            if self.state == "stopped":
                return
            self.state = "stopped"
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # a device that vanished cannot be stopped; the spool is what matters
            pass
        self._captured.put(None)

    def wait(self, timeout: float | None = None) -> None:
        """Until the spool is closed."""
        self._writer.join(timeout)

    def blocks(self) -> Iterator[np.ndarray]:
        """Recorded blocks in order, as soon as they are spooled; ends after stop()."""
        while True:
            block = self._out.get()
            if block is None:
                return
            yield block

    # -- threads ---------------------------------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if self.state == "recording":
            self._captured.put(indata[:, 0].copy())

    def _finished(self) -> None:
        """PortAudio ended the stream (stop, or the device went away): end the recording."""
        if self.state != "stopped":
            self.error = "the input device stopped delivering audio"
            with self._lock:
                self.state = "stopped"
            self._captured.put(None)

    def _write_loop(self) -> None:
        last_sync = time.monotonic()
        limit_hit = False
        try:
            while True:
                try:
                    block = self._captured.get(timeout=FLUSH_SECONDS / 2)
                except queue.Empty:
                    block = np.empty(0, np.float32)
                if block is None:
                    break
                if self.max_frames:
                    block = block[:max(0, self.max_frames - self.spool.frames)]
                try:
                    if len(block):
                        self.spool.write(block)
                    if time.monotonic() - last_sync >= FLUSH_SECONDS:
                        self.spool.sync()
                        last_sync = time.monotonic()
                except OSError as exc:  # a full disk: stop recording, keep what was spooled
                    self.write_error = exc
                    self.error = f"the recording stopped after {self.recorded_seconds:.1f} s: {exc.strerror}"
                    threading.Thread(target=self.stop, daemon=True).start()
                    break
                if len(block):
                    self._out.put(block)
                if self.max_frames and self.spool.frames >= self.max_frames and not limit_hit:
                    limit_hit = True  # stop() joins PortAudio's thread: not from here, and only once
                    threading.Thread(target=self.stop, daemon=True).start()
        finally:
            try:
                self.spool.close()
            except OSError as exc:  # the last header rewrite failed: the one before still holds
                self.write_error = self.write_error or exc
            finally:
                self._out.put(None)
