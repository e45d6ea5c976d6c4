"""A long transcription run clip by clip, each clip its own scheduler job (meetings.RunOnDecoder), for any
front end: the gRPC Transcribe and RecordMeeting calls and the HTTP transcriptions endpoint.

Why one job per clip: the shared decoder is never held for a whole meeting, so other clients' requests run
between two clips of a 20-minute transcription.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from omnid.daemon.scheduler import JobHandle, QueueFull, Scheduler
from omnid.daemon.session import Cancelled, DecoderSession
from omnid.modalities import meetings
from omnid.modalities.audio_clips import MAX_CLIP_TOKENS, clip_seconds, cut_stream
from omnid.modalities.audio_io import AudioStream
from omnid.models.base import ModelInfo

T = TypeVar("T")

#: How long a clip's job may wait for room in a full queue before the meeting gives up.
QUEUE_FULL_PATIENCE_SECONDS = 60.0
#: The clip length asked for when transcribing a file (bounded by the encoder and the token budget): 30 s,
#: like whisper.
FILE_CLIP_SECONDS = 30.0


def clip_length(info: ModelInfo, target: float = FILE_CLIP_SECONDS) -> float:
    """Seconds of sound per clip: `target`, or less where the model's encoder or the clip token budget says so."""
    return clip_seconds(target, info.max_audio_clip_seconds, info.audio_tokens_per_second, MAX_CLIP_TOKENS)


class ClipRunner:
    """Runs a function as its own decoder job and adds up the time the jobs waited.

    A full queue is waited out (for a while) instead of failing a meeting that is half transcribed. `cancel`
    (the client went away) stops the clip being decoded and refuses the ones after it."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._cancelled = threading.Event()
        self._current: JobHandle | None = None
        #: Time the meeting's jobs waited for the decoder, summed (reported in its Usage).
        self.queue_ms = 0.0

    def cancel(self) -> None:
        self._cancelled.set()
        current = self._current
        if current is not None:
            current.cancel()

    def __call__(self, fn: Callable[[DecoderSession], T]) -> T:
        deadline = time.monotonic() + QUEUE_FULL_PATIENCE_SECONDS
        while True:
            if self._cancelled.is_set():
                raise Cancelled()
            try:
                handle = self._scheduler.submit(lambda session, emit: fn(session), "meeting-clip")
                break
            except QueueFull:
                if time.monotonic() > deadline:
                    raise
                self._cancelled.wait(0.2)
        self._current = handle
        if self._cancelled.is_set():  # cancelled between the check and the submit
            handle.cancel()
        try:
            result = handle.result()
        finally:
            handle.cancel()
            self._current = None
        self.queue_ms += handle.queue_ms
        return result


def transcribe_file(scheduler: Scheduler, info: ModelInfo, data: bytes, settings: meetings.TranscribeSettings,
                    run: ClipRunner) -> meetings.Transcript:
    """A whole encoded recording transcribed clip by clip, kept nowhere (the HTTP API's transcriptions; a gRPC
    Transcribe also stores and streams each segment, rpc_meetings._serve). Blocks until done: call it from a
    thread of its own."""
    stream = AudioStream(data)
    transcript = meetings.Transcript(settings)
    try:
        for _ in meetings.transcribe(cut_stream(stream.blocks(), stream.rate, clip_length(info)), run, transcript):
            pass
    finally:
        stream.close()
        assert scheduler.cache is not None
        meetings.finish(scheduler.cache, transcript)
    return transcript
