"""The page's meetings API: record from a microphone with a live transcript, past meetings, search, summary.

    GET  /api/meetings/devices        {"devices": [AudioDevice]}
    GET  /api/meetings/current        MeetingState of the meeting being recorded now (state "none" without one)
    POST /api/meetings                JSON {device?, title?, summary? (default true), max_seconds?}:
                                      starts recording -> MeetingState ({"meeting_id", "state", ...})
    GET  /api/meetings/{id}/live      SSE: {"segment": ...} as each is transcribed, {"state": MeetingState} as
                                      the recording changes (and each second it records), then
                                      {"done": TranscriptFinal} (summary included)
    POST /api/meetings/{id}/stop      (and /pause, /resume): ControlMeeting -> MeetingState
    GET  /api/meetings?q=&limit=      {"meetings": [MeetingSummary]}: the newest, or a full-text search
    GET  /api/meetings/{id}           TranscriptFinal (segments, text, summary)
    DELETE /api/meetings/{id}         DeleteMeetings for that id

A recording is the RecordMeeting handler itself (daemon/rpc_meetings.py), run on a thread of its own for as
long as the meeting lasts: the page that started it may reload or close, the recording goes on until someone
(the page, the menubar, `omni meeting stop`) stops it. The live view reads what that handler stores as it goes
(each segment is stored when transcribed), so any meeting being recorded, however it was started, can be
followed, and a page that opens late still gets the transcript from its start.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from omnid.daemon.web.rpc_call import (SSE_HEADERS, Aborted, CallContext, Rpcs, event_bytes, guarded, in_thread,
                                       json_body, to_json, unary)
from omnid.models.base import InputError
from omnid.proto import omnid_pb2 as pb

if TYPE_CHECKING:
    from omnid.daemon.server import OmniServicer

log = logging.getLogger(__name__)

#: How often the live view looks for new segments and the recording's state (seconds).
LIVE_POLL_SECONDS = 0.5
#: How long a start waits for the recorder to open the microphone before giving up (seconds).
START_SECONDS = 15.0
#: States of a recorder that runs.
_GOING = ("recording", "paused")


def routes(rpcs: Rpcs) -> list[BaseRoute]:
    api = _MeetingsApi(rpcs)
    return [
        Route("/api/meetings/devices", guarded(api.devices), methods=["GET"]),
        Route("/api/meetings/current", guarded(api.current), methods=["GET"]),
        Route("/api/meetings", guarded(api.start), methods=["POST"]),
        Route("/api/meetings", guarded(api.list), methods=["GET"]),
        Route("/api/meetings/{meeting_id}/live", guarded(api.live), methods=["GET"]),
        Route("/api/meetings/{meeting_id}/{action:str}", guarded(api.control), methods=["POST"]),
        Route("/api/meetings/{meeting_id}", guarded(api.get), methods=["GET"]),
        Route("/api/meetings/{meeting_id}", guarded(api.delete), methods=["DELETE"]),
    ]


class _Recording:
    """One RecordMeeting call run to its end on its own thread (its events are stored; nobody reads them)."""

    def __init__(self, servicer: OmniServicer, request: pb.RecordMeetingRequest) -> None:
        self.context = CallContext()
        self.error: Aborted | None = None
        self.thread = threading.Thread(target=self._run, args=(servicer, request), name="omnid-web-meeting",
                                       daemon=True)
        self.thread.start()

    def _run(self, servicer: OmniServicer, request: pb.RecordMeetingRequest) -> None:
        try:
            for _ in servicer.RecordMeeting(request, self.context):
                pass
        except Aborted as exc:
            self.error = exc
            log.warning("a meeting started from the page ended: %s", exc)
        except Exception:
            log.exception("a meeting started from the page failed")


class _MeetingsApi:
    def __init__(self, rpcs: Rpcs) -> None:
        self.rpcs = rpcs

    async def devices(self, request: Request) -> Response:
        return JSONResponse(await unary(self.rpcs.get().ListAudioDevices, pb.ListAudioDevicesRequest()))

    async def current(self, request: Request) -> Response:
        return JSONResponse(await unary(self.rpcs.get().ControlMeeting, pb.MeetingControlRequest(action="status")))

    async def start(self, request: Request) -> Response:
        servicer = self.rpcs.get()
        body = await json_body(request)
        device, title = _text(body, "device"), _text(body, "title")
        summary = body.get("summary", True)
        max_seconds = body.get("max_seconds", 0)
        if not isinstance(summary, bool):
            raise InputError("'summary' must be true or false")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or max_seconds < 0:
            raise InputError(f"'max_seconds' must be a non-negative number, got {max_seconds!r}")
        status = pb.MeetingControlRequest(action="status")
        before = await unary(servicer.ControlMeeting, status)  # a meeting already live is not the new one
        recording = _Recording(servicer, pb.RecordMeetingRequest(device=device, title=title, summary=summary,
                                                                 max_seconds=float(max_seconds)))
        return JSONResponse(await in_thread(lambda: self._started(recording, before["meeting_id"])))

    def _started(self, recording: _Recording, before: str) -> dict[str, Any]:
        """The new meeting's state once its recorder runs, or the handler's refusal (a meeting already being
        recorded, a missing microphone, a model without audio) as this request's error."""
        servicer = self.rpcs.get()
        deadline = time.monotonic() + START_SECONDS
        while recording.thread.is_alive() and time.monotonic() < deadline:
            state = servicer.ControlMeeting(pb.MeetingControlRequest(action="status"), CallContext())
            if state.state in _GOING and state.meeting_id != before:
                return to_json(state)
            recording.thread.join(0.02)
        recording.thread.join(0.5)
        if recording.error is not None:
            raise recording.error
        recording.context.cancel()
        raise InputError("the recording did not start (see the daemon's log)", unsupported=True)

    async def control(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("stop", "pause", "resume", "status"):
            raise InputError(f"unknown action {action!r} (stop, pause, resume, status)")
        message = pb.MeetingControlRequest(meeting_id=request.path_params["meeting_id"], action=action)
        return JSONResponse(await unary(self.rpcs.get().ControlMeeting, message))

    async def list(self, request: Request) -> Response:
        limit = request.query_params.get("limit", "50")
        if not limit.isdigit():
            raise InputError(f"'limit' must be a positive integer, got {limit!r}")
        message = pb.ListMeetingsRequest(query=request.query_params.get("q", ""), limit=int(limit))
        return JSONResponse(await unary(self.rpcs.get().ListMeetings, message))

    async def get(self, request: Request) -> Response:
        message = pb.GetMeetingRequest(meeting_id=request.path_params["meeting_id"])
        return JSONResponse(await unary(self.rpcs.get().GetMeeting, message))

    async def delete(self, request: Request) -> Response:
        message = pb.DeleteRequest(ids=[request.path_params["meeting_id"]])
        return JSONResponse(await unary(self.rpcs.get().DeleteMeetings, message))

    async def live(self, request: Request) -> Response:
        meeting_id = request.path_params["meeting_id"]
        first = await in_thread(lambda: self._look(meeting_id))  # an unknown id is a 404 before the stream
        return StreamingResponse(self._follow(request, first), media_type="text/event-stream", headers=SSE_HEADERS)

    def _look(self, meeting_id: str) -> tuple[pb.TranscriptFinal, pb.MeetingState, bool]:
        """The stored transcript so far, the meeting's state, and whether it is still the live one (the same
        RPCs `omni meeting` uses). A stopped recording stays live until its last clip is transcribed and its
        summary stored."""
        servicer = self.rpcs.get()
        stored = servicer.GetMeeting(pb.GetMeetingRequest(meeting_id=meeting_id), CallContext())
        live = servicer.ControlMeeting(pb.MeetingControlRequest(action="status"), CallContext())
        if live.meeting_id == stored.meeting_id:
            return stored, live, True
        state = servicer.ControlMeeting(pb.MeetingControlRequest(meeting_id=stored.meeting_id, action="status"),
                                        CallContext())
        return stored, state, False

    async def _follow(self, request: Request, first: tuple[pb.TranscriptFinal, pb.MeetingState, bool]
                      ) -> AsyncIterator[bytes]:
        """New segments and state changes while the meeting is live, then the whole transcript."""
        stored, state, live = first
        sent, told = 0, ("", -1)
        try:
            while True:
                for segment in stored.segments[sent:]:
                    yield event_bytes({"segment": to_json(segment)})
                sent = len(stored.segments)
                if (state.state, int(state.recorded_seconds)) != told:  # a change, or the clock's next second
                    yield event_bytes({"state": to_json(state)})
                    told = (state.state, int(state.recorded_seconds))
                if not live:
                    yield event_bytes({"done": to_json(stored)})
                    return
                await asyncio.sleep(LIVE_POLL_SECONDS)
                if await request.is_disconnected():
                    return
                stored, state, live = await in_thread(lambda: self._look(stored.meeting_id))
        except Aborted as exc:
            yield event_bytes(exc.body)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError(f"'{name}' must be a string, got {value!r}")
    return str(value)
