"""Audio and meeting RPCs: Transcribe, RecordMeeting, ControlMeeting, ListAudioDevices, ListMeetings, GetMeeting.

The work is split so the shared decoder is never held for a whole meeting: reading, resampling and cutting the
audio (and capturing it, for a live meeting) happen in the RPC's handler thread, and each clip is its own
scheduler job (see modalities/meetings.py for how the meeting's context survives between jobs). Other clients'
requests run between two clips of a 20-minute transcription.

Nothing lost: a file's transcript is stored segment by segment as it is produced; uploaded audio is kept
next to it (the path a client named is stored as is); a live meeting's audio is spooled to disk as captured.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc

from omnid.daemon.clip_runner import FILE_CLIP_SECONDS, ClipRunner, clip_length
from omnid.daemon.config import private_dir
from omnid.daemon.errors import NotFound
from omnid.daemon.rpc_base import Deletion, RpcBase, abort, sampling_from
from omnid.modalities import meetings
from omnid.modalities.audio_clips import cut_stream
from omnid.modalities.audio_io import AudioStream, pcm_blocks, pcm_from_f32le
from omnid.modalities.ids import MIN_PREFIX
from omnid.modalities.meeting_store import MeetingRow, MeetingStore
from omnid.modalities.recorder import Recorder, WavSpool, input_devices
from omnid.models.base import InputError, require
from omnid.proto import omnid_pb2 as pb

log = logging.getLogger(__name__)

#: The clip length asked for live (bounded by the encoder and the token budget): 15 s, so a segment appears within
#: ~15 s of being said (files: clip_runner.FILE_CLIP_SECONDS).
LIVE_CLIP_SECONDS = 15.0
#: Meeting states whose audio is still being captured or transcribed: not deletable until they end.
_ACTIVE = ("recording", "transcribing")


@dataclass
class _Live:
    """The meeting being recorded now (one microphone, one live meeting at a time)."""

    meeting_id: str
    recorder: Recorder


class MeetingRpcs(RpcBase):
    def setup(self) -> None:
        super().setup()
        self.meetings_dir = private_dir(Path(self.config.data_dir) / "meetings")
        self.audio_dir = private_dir(self.meetings_dir / "audio")
        self.meeting_store = MeetingStore(self.meetings_dir)
        self._live: _Live | None = None
        self._live_lock = threading.Lock()

    def close(self) -> None:
        live = self._live
        if live is not None:
            live.recorder.stop()
            live.recorder.wait(5.0)
        self.meeting_store.close()
        super().close()

    # -- Transcribe ------------------------------------------------------------------------------------------

    def Transcribe(self, request: pb.TranscribeRequest, context: grpc.ServicerContext) -> Iterator[pb.TranscriptEvent]:
        source = request.audio.WhichOneof("source")
        if request.path and source:
            self.call(context, lambda: _raise(InputError("give either a path or audio, not both")))
        self.call(context, lambda: require(self.info, "audio", "transcribe"))
        settings = self.call(context, lambda: self._settings(request.summary, request.language, None))
        max_clip = self.call(context, lambda: self._clip_seconds(FILE_CLIP_SECONDS))
        store = not request.no_store
        if request.path:
            opened = self.call(context, lambda: self.open_readable(request.path))
            stream = self.call(context, lambda: AudioStream(opened.file))  # owns the descriptor: never reopened
            meeting_id = self.call(context, lambda: self._create(store, request.title or opened.name, request.path))
            audio_path, rate, total, blocks = request.path, stream.rate, stream.seconds, stream.blocks()
        elif source == "encoded":
            stream = self.call(context, lambda: AudioStream(request.audio.encoded))
            meeting_id = self.call(context, lambda: self._create(store, request.title or "upload", ""))
            audio_path = self.call(context, lambda: self._keep(meeting_id, stream.format.lower(),
                                                               lambda p: p.write_bytes(request.audio.encoded))
                                   if store else "")
            rate, total, blocks = stream.rate, stream.seconds, stream.blocks()
        elif source == "pcm":
            pcm = request.audio.pcm
            samples = self.call(context, lambda: pcm_from_f32le(pcm.f32le, pcm.sample_rate, pcm.channels))
            if not len(samples):
                self.call(context, lambda: _raise(InputError("the audio has no samples")))
            meeting_id = self.call(context, lambda: self._create(store, request.title or "upload", ""))
            audio_path = self.call(context, lambda: self._keep(meeting_id, "wav",
                                                               lambda p: _write_wav(p, samples, pcm.sample_rate))
                                   if store else "")
            rate, total, blocks = pcm.sample_rate, len(samples) / pcm.sample_rate, pcm_blocks(samples)
        else:
            self.call(context, lambda: _raise(InputError("no audio: set path, audio.encoded or audio.pcm")))
        yield from self._serve(context, meeting_id, audio_path, cut_stream(blocks, rate, max_clip), settings,
                               lambda: ("transcribing", total))

    def _create(self, store: bool, title: str, audio_path: str) -> str:
        """A stored meeting's id, or "" for a transcript that is kept nowhere (no_store)."""
        return self.meeting_store.create(title, audio_path, "transcribing") if store else ""

    # -- live meetings ---------------------------------------------------------------------------------------

    def RecordMeeting(self, request: pb.RecordMeetingRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.TranscriptEvent]:
        self.call(context, lambda: require(self.info, "audio", "transcribe"))
        settings = self.call(context, lambda: self._settings(request.summary, "", None))
        max_clip = self.call(context, lambda: self._clip_seconds(LIVE_CLIP_SECONDS))
        with self._live_lock:
            busy = self._live
            if busy is not None:
                self.call(context, lambda: _raise(InputError(
                    f"meeting {busy.meeting_id} is already being recorded; stop it first", unsupported=True)))
            meeting_id = self.call(context, lambda: self.meeting_store.create(
                request.title or time.strftime("Meeting %Y-%m-%d %H:%M"), "", "recording"))
            spool = self.audio_dir / f"{meeting_id}.wav"
            try:
                recorder = self.call(context, lambda: Recorder(spool, request.device, self.info.audio_sample_rate,
                                                               request.max_seconds))
            except BaseException:
                self._mark(meeting_id, state="failed")
                raise
            self.call(context, lambda: self.meeting_store.update(meeting_id, audio_path=str(spool)))
            live = self._live = _Live(meeting_id, recorder)
        # A client that goes away stops the recording: the spool is closed and complete.
        context.add_callback(recorder.stop)
        try:
            yield from self._serve(context, meeting_id, str(spool),
                                   cut_stream(recorder.blocks(), recorder.rate, max_clip), settings,
                                   lambda: (recorder.state, 0.0), lambda: _spool_failure(recorder, meeting_id))
        finally:
            recorder.stop()
            recorder.wait(5.0)
            with self._live_lock:
                if self._live is live:
                    self._live = None

    def ControlMeeting(self, request: pb.MeetingControlRequest, context: grpc.ServicerContext) -> pb.MeetingState:
        return self.call(context, lambda: self._control(request.meeting_id, request.action))

    def _control(self, meeting_id: str, action: str) -> pb.MeetingState:
        if action not in ("pause", "resume", "stop", "status", ""):
            raise InputError(f"unknown action {action!r} (pause, resume, stop, status)")
        live = self._live
        typed = meeting_id.strip().lower()
        if live is not None and len(typed) >= MIN_PREFIX and live.meeting_id.startswith(typed):
            meeting_id = live.meeting_id
        if live is not None and meeting_id in ("", live.meeting_id):
            r = live.recorder
            {"pause": r.pause, "resume": r.resume, "stop": r.stop}.get(action, lambda: None)()
            return pb.MeetingState(meeting_id=live.meeting_id, state=r.state, recorded_seconds=r.recorded_seconds,
                                   audio_path=str(r.spool.path))
        if not meeting_id:
            if action in ("status", ""):
                return pb.MeetingState(state="none")
            raise NotFound("no meeting is being recorded")
        found = self.meeting_store.get(meeting_id)
        if found is None:
            raise NotFound(f"no meeting {meeting_id!r} (see `omni meeting list`)")
        if action in ("pause", "resume"):
            raise InputError(f"meeting {meeting_id} is not being recorded (it is {found[0].state})")
        row = found[0]
        # A meeting whose daemon died (SIGKILL, a crash) was marked "interrupted" at the next start-up: say so,
        # so a client does not take a cut-off transcript for a finished one. So is one that failed.
        state = row.state if row.state in ("interrupted", "failed") else "stopped"
        return pb.MeetingState(meeting_id=row.id, state=state, recorded_seconds=row.duration,
                               audio_path=row.audio_path)

    def ListAudioDevices(self, request: pb.ListAudioDevicesRequest,
                         context: grpc.ServicerContext) -> pb.ListAudioDevicesReply:
        devices = self.call(context, input_devices)
        return pb.ListAudioDevicesReply(devices=[
            pb.AudioDevice(index=d.index, name=d.name, max_input_channels=d.max_input_channels,
                           default_sample_rate=d.default_sample_rate, is_default=d.is_default) for d in devices])

    # -- stored meetings -------------------------------------------------------------------------------------

    def ListMeetings(self, request: pb.ListMeetingsRequest, context: grpc.ServicerContext) -> pb.ListMeetingsReply:
        limit = request.limit or 50
        rows = self.call(context, lambda: self.meeting_store.search(request.query, limit) if request.query.strip()
                         else self.meeting_store.list(limit))
        return pb.ListMeetingsReply(meetings=[_summary(r) for r in rows])

    def GetMeeting(self, request: pb.GetMeetingRequest, context: grpc.ServicerContext) -> pb.TranscriptFinal:
        def get() -> pb.TranscriptFinal:
            found = self.meeting_store.get(request.meeting_id)
            if found is None:
                raise NotFound(f"no meeting {request.meeting_id!r} (see `omni meeting list`)")
            row, segments = found
            usage = pb.Usage(**json.loads(row.usage_json)) if row.usage_json else pb.Usage()
            return pb.TranscriptFinal(meeting_id=row.id, segments=[_segment(s) for s in segments],
                                      text=" ".join(s.text for s in segments if s.text), summary=row.summary,
                                      usage=usage, audio_path=row.audio_path, duration_seconds=row.duration)
        return self.call(context, get)

    def DeleteMeetings(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteReply:
        """Transcripts, summaries, their search index entries, and the audio the daemon kept for them."""
        def delete() -> pb.DeleteReply:
            what = Deletion.of(request)
            if what.ids:
                ids = []
                for given in what.ids:
                    full_id = self.meeting_store.resolve(given)
                    if full_id is None:
                        raise NotFound(f"no meeting {given!r} (see `omni meeting list`)")
                    row = self.meeting_store.get(full_id)
                    if row is not None and row[0].state in _ACTIVE:
                        raise InputError(f"meeting {full_id} is {row[0].state} now; stop it first", unsupported=True)
                    ids.append(full_id)
            else:
                since, until = (0.0, 0.0) if what.everything else (what.since, what.until)
                ids = list(self.meeting_store.ids_between(since, until))
            reply = pb.DeleteReply()
            for meeting_id in dict.fromkeys(ids):
                found = self.meeting_store.get(meeting_id)
                if found is None or found[0].state in _ACTIVE:  # a range or `all` leaves running ones alone
                    continue
                self.meeting_store.delete(meeting_id)
                reply.bytes_removed += self._remove_kept_audio(found[0].audio_path)
                reply.deleted_ids.append(meeting_id)
            reply.deleted = len(reply.deleted_ids)
            log.info("deleted %d meetings", reply.deleted)
            return reply
        return self.call(context, delete)

    def _remove_kept_audio(self, audio_path: str) -> int:
        """Delete the audio file if the daemon made it (under its audio folder); a client's own file stays."""
        if not audio_path:
            return 0
        path = Path(audio_path)
        if not path.resolve().is_relative_to(self.audio_dir.resolve()) or not path.is_file():
            return 0
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        return size

    # -- the shared loop -------------------------------------------------------------------------------------

    def _serve(self, context: grpc.ServicerContext, meeting_id: str, audio_path: str, clips: Iterator,
               settings: meetings.TranscribeSettings, progress: Callable[[], tuple[str, float]],
               failure: Callable[[], str] = lambda: "") -> Iterator[pb.TranscriptEvent]:
        """Transcribe clips one decoder job each, storing and streaming each segment, then the final message.

        `failure` says why the audio ended early (a live recording's full disk) or returns "". With a reason,
        the call ends with RESOURCE_EXHAUSTED and that reason instead of the final message, once what was
        heard is transcribed."""
        t0 = time.perf_counter()
        transcript = meetings.Transcript(settings)
        run = ClipRunner(self.scheduler)
        context.add_callback(run.cancel)
        try:
            for i, segment in enumerate(meetings.transcribe(clips, run, transcript)):
                if meeting_id:
                    self.meeting_store.add_segment(meeting_id, i, segment)
                yield pb.TranscriptEvent(segment=_segment(segment))
                state, total = progress()
                yield pb.TranscriptEvent(progress=pb.TranscriptProgress(
                    audio_seconds_done=segment.end, audio_seconds_total=total, state=state))
            if settings.summary:
                run(lambda session: meetings.summarise(session, transcript))
        except GeneratorExit:  # the client went away: what was transcribed so far stays stored
            self._mark(meeting_id, state="cancelled", duration=transcript.end)
            raise
        except Exception as exc:
            self._mark(meeting_id, state="failed", duration=transcript.end)
            reason = failure()  # the store's error on a full disk is the spool's too: say what it did to the audio
            if reason:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
            abort(context, exc)
        finally:
            assert self.scheduler.cache is not None
            meetings.finish(self.scheduler.cache, transcript)
        reason = failure()
        if reason:
            self._mark(meeting_id, state="failed", duration=transcript.end)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        usage = _usage(transcript.usage, run.queue_ms, (time.perf_counter() - t0) * 1000)
        if meeting_id:
            self.meeting_store.update(meeting_id, state="done", duration=transcript.end, summary=transcript.summary,
                                      usage_json=json.dumps({f.name: getattr(usage, f.name)
                                                             for f in usage.DESCRIPTOR.fields}))
        yield pb.TranscriptEvent(done=pb.TranscriptFinal(
            meeting_id=meeting_id, segments=[_segment(s) for s in transcript.segments], text=transcript.text,
            summary=transcript.summary, usage=usage, audio_path=audio_path, duration_seconds=transcript.end))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _settings(self, summary: bool, language: str, sampling: pb.Sampling | None) -> meetings.TranscribeSettings:
        return meetings.TranscribeSettings(summary=summary, language=language,
                                           summary_max_tokens=self.config.default_max_tokens,
                                           sampling=sampling_from(sampling or pb.Sampling()))

    def _clip_seconds(self, target: float) -> float:
        return clip_length(self.info, target)

    def _mark(self, meeting_id: str, state: str, duration: float | None = None) -> None:
        """Record how a meeting ended, if it can be: on a full disk the store may refuse this too, and the call
        must still end with its own status, not with the store's error."""
        if not meeting_id:
            return
        try:
            self.meeting_store.update(meeting_id, state=state, duration=duration)
        except (sqlite3.Error, OSError) as exc:
            log.warning("meeting %s: could not record that it is %s: %s", meeting_id, state, exc)

    def _keep(self, meeting_id: str, extension: str, write: Callable[[Path], object]) -> str:
        """Uploaded audio is kept next to its transcript (a path the client named is stored as is). If it cannot
        be written (a full disk), nothing half-written stays and the meeting is marked failed."""
        path = self.audio_dir / f"{meeting_id}.{extension}"
        try:
            write(path)
        except BaseException:
            path.unlink(missing_ok=True)
            with contextlib.suppress(sqlite3.Error):
                self.meeting_store.update(meeting_id, state="failed")
            raise
        self.meeting_store.update(meeting_id, audio_path=str(path))
        return str(path)


def _spool_failure(recorder: Recorder, meeting_id: str) -> str:
    """Why a live recording ended before it was stopped, for the client, or "" if it was not cut short."""
    exc = recorder.write_error
    if exc is None:
        return ""
    cause = ("the daemon's disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
             else f"the recording could not be written ({exc.strerror})")
    return (f"{cause}: the recording stopped after {recorder.recorded_seconds:.1f} s; the audio recorded until "
            f"then is kept (meeting {meeting_id})")


def _raise(exc: BaseException) -> None:
    raise exc


def _write_wav(path: Path, samples, rate: int) -> None:
    spool = WavSpool(path, rate)
    for block in pcm_blocks(samples):  # 16-bit a block at a time: no whole-length float temporaries
        spool.write(block)
    spool.close()


def _segment(s: meetings.TranscriptSegment) -> pb.TranscriptSegment:
    return pb.TranscriptSegment(start_seconds=s.start, end_seconds=s.end, text=s.text)


def _summary(r: MeetingRow) -> pb.MeetingSummary:
    return pb.MeetingSummary(meeting_id=r.id, title=r.title, created_unix=r.created, duration_seconds=r.duration,
                             audio_path=r.audio_path, snippet=r.snippet)


def _usage(u: meetings.TranscriptUsage, queue_ms: float, total_ms: float) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens,
                    generated_tokens=u.generated_tokens, time_to_first_token_ms=u.first_token_ms,
                    decode_tokens_per_second=u.generated_tokens / (u.decode_ms / 1000) if u.decode_ms else 0.0,
                    queue_ms=queue_ms, prefill_ms=u.prefill_ms, total_ms=total_ms)

