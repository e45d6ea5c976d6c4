"""Client calls for audio and meetings (a mixin of OmniClient).

    with OmniClient() as omni:
        for event in omni.transcribe("standup.wav", summary=True):
            ...                                     # TranscriptEvent: segment, progress, then done
        final = omni.transcript(omni.transcribe("standup.wav"))   # just the TranscriptFinal
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from omnid.proto import omnid_pb2 as pb


class MeetingsClient:
    stub: object
    metadata: tuple[tuple[str, str], ...]

    def transcribe(self, source: str | Path | bytes | np.ndarray, *, sample_rate: int = 0, summary: bool = False,
                   language: str = "", title: str = "", by_path: bool = False,
                   no_store: bool = False) -> Iterator[pb.TranscriptEvent]:
        """Transcribe a file (sent as bytes, or named by path with by_path=True: the daemon must be allowed to
        read it), encoded bytes, or float samples (with sample_rate). The daemon stores the transcript and a
        copy of sent audio as a meeting (the final message says where) unless no_store."""
        request = pb.TranscribeRequest(summary=summary, language=language, title=title, no_store=no_store)
        if isinstance(source, np.ndarray):
            samples = np.asarray(source, dtype="<f4")
            channels = 1 if samples.ndim == 1 else samples.shape[1]
            request.audio.pcm.CopyFrom(pb.Pcm(f32le=samples.tobytes(), sample_rate=sample_rate, channels=channels))
        elif isinstance(source, bytes):
            request.audio.encoded = source
        elif by_path:
            request.path = str(Path(source).expanduser().resolve())
        else:
            request.audio.encoded = Path(source).expanduser().read_bytes()
            request.title = title or Path(source).name
        return self.stub.Transcribe(request, metadata=self.metadata)  # type: ignore[attr-defined]

    def record_meeting(self, *, device: str = "", title: str = "", summary: bool = False,
                       max_seconds: float = 0.0) -> Iterator[pb.TranscriptEvent]:
        """Record from a microphone on the daemon's machine, streaming the transcript until stopped."""
        request = pb.RecordMeetingRequest(device=device, title=title, summary=summary, max_seconds=max_seconds)
        return self.stub.RecordMeeting(request, metadata=self.metadata)  # type: ignore[attr-defined]

    def control_meeting(self, action: str, meeting_id: str = "") -> pb.MeetingState:
        """"pause", "resume", "stop" or "status" for the meeting being recorded (or a stored one by id)."""
        return self.stub.ControlMeeting(pb.MeetingControlRequest(meeting_id=meeting_id, action=action),  # type: ignore[attr-defined]
                                        metadata=self.metadata)

    def audio_devices(self) -> list[pb.AudioDevice]:
        return list(self.stub.ListAudioDevices(pb.ListAudioDevicesRequest(),  # type: ignore[attr-defined]
                                               metadata=self.metadata).devices)

    def meetings(self, query: str = "", limit: int = 0) -> list[pb.MeetingSummary]:
        """Stored meetings, newest first; with a query, those whose transcript, title or summary match."""
        return list(self.stub.ListMeetings(pb.ListMeetingsRequest(query=query, limit=limit),  # type: ignore[attr-defined]
                                           metadata=self.metadata).meetings)

    def meeting(self, meeting_id: str) -> pb.TranscriptFinal:
        return self.stub.GetMeeting(pb.GetMeetingRequest(meeting_id=meeting_id),  # type: ignore[attr-defined]
                                    metadata=self.metadata)

    def delete_meetings(self, ids: Iterable[str] = (), *, since: float = 0.0, until: float = 0.0,
                        everything: bool = False) -> pb.DeleteReply:
        """Delete stored meetings by id (or unique prefix), created within [since, until), or all (exactly
        one of these): transcript, summary and the audio the daemon kept."""
        request = pb.DeleteRequest(ids=list(ids), since_unix=since, until_unix=until, all=everything)
        return self.stub.DeleteMeetings(request, metadata=self.metadata)  # type: ignore[attr-defined]

    @staticmethod
    def transcript(events: Iterable[pb.TranscriptEvent]) -> pb.TranscriptFinal:
        """The final message of a transcript stream."""
        final = None
        for event in events:
            if event.WhichOneof("event") == "done":
                final = event.done
        if final is None:
            raise RuntimeError("the stream ended without a final message")
        return final
