"""Transcripts in the formats other tools read: plain text, SubRip (.srt), WebVTT (.vtt).

Each format is written cue by cue, so `omni transcribe --format srt` can stream segments as the daemon
produces them and the whole file is still valid when it ends. JSON is the TranscriptFinal message itself
(cli_common.to_dict), so it is not here. Both sides use it: the CLI on TranscriptSegment messages, the daemon's
HTTP API (OpenAI's response_format srt, vtt, text) on its own segments.
"""
from __future__ import annotations

from typing import Protocol, Sequence

FORMATS = ("txt", "srt", "vtt", "json")


class Cue(Protocol):
    """A timed piece of a transcript (a TranscriptSegment message has these fields)."""

    @property
    def start_seconds(self) -> float: ...
    @property
    def end_seconds(self) -> float: ...
    @property
    def text(self) -> str: ...


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def header(fmt: str) -> str:
    """What the file starts with (WebVTT's signature line)."""
    return "WEBVTT\n\n" if fmt == "vtt" else ""


def cue(fmt: str, index: int, segment: Cue) -> str:
    """One segment (index from 1) in the format, with its trailing blank line where the format has one.
    Segments without words (silence) have no cue: number only the segments that `has_words`."""
    text = segment.text.strip()
    if fmt == "txt":
        return text + "\n"
    if fmt == "srt":
        return (f"{index}\n{_timestamp(segment.start_seconds, ',')} --> {_timestamp(segment.end_seconds, ',')}\n"
                f"{text}\n\n")
    if fmt == "vtt":
        return (f"{_timestamp(segment.start_seconds, '.')} --> {_timestamp(segment.end_seconds, '.')}\n"
                f"{text}\n\n")
    raise ValueError(f"unknown transcript format {fmt!r} (choose from {', '.join(FORMATS)})")


def has_words(segment: Cue) -> bool:
    return bool(segment.text.strip())


def document(fmt: str, segments: Sequence[Cue]) -> str:
    """A whole transcript in the format."""
    spoken = [s for s in segments if has_words(s)]
    return header(fmt) + "".join(cue(fmt, i, s) for i, s in enumerate(spoken, start=1))
