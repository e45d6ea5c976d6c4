"""The page's screen-history API: search what the model saw, show the frame, run and pause the watcher.

    GET  /api/screen/search?q=&limit=&since=&until=   {"observations": [ScreenObservation + "frame": URL]}
    GET  /api/screen/frames/{id}.jpg                  the frame the model was shown (404 for a row without one)
    POST /api/screen/ask                              JSON {question, since?, until?, max_tokens?}: SSE of
                                                      GenerateEvent as JSON, answered from the history
    GET  /api/screen/watch                            ScreenWatchState
    POST /api/screen/watch                            JSON {action: start|stop|pause|resume, interval_seconds?,
                                                      monitor?}: ScreenWatchState

The same handlers as `omni screen` (daemon/rpc_screen.py) and the same history: frames watched from the
menubar are found here.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from omnid.daemon.errors import NotFound
from omnid.daemon.web.rpc_call import Pump, Rpcs, guarded, in_thread, json_body, sse, unary
from omnid.models.base import InputError
from omnid.proto import omnid_pb2 as pb


def routes(rpcs: Rpcs) -> list[BaseRoute]:
    api = _ScreenApi(rpcs)
    return [
        Route("/api/screen/search", guarded(api.search), methods=["GET"]),
        Route("/api/screen/frames/{obs_id}.jpg", guarded(api.frame), methods=["GET"]),
        Route("/api/screen/ask", guarded(api.ask), methods=["POST"]),
        Route("/api/screen/watch", guarded(api.state), methods=["GET"]),
        Route("/api/screen/watch", guarded(api.control), methods=["POST"]),
    ]


class _ScreenApi:
    def __init__(self, rpcs: Rpcs) -> None:
        self.rpcs = rpcs

    async def search(self, request: Request) -> Response:
        q = request.query_params
        message = pb.SearchScreenRequest(query=q.get("q", ""), limit=int(_number(q.get("limit"), "limit")),
                                         since_unix=_number(q.get("since"), "since"),
                                         until_unix=_number(q.get("until"), "until"))
        found = await unary(self.rpcs.get().SearchScreen, message)
        for observation in found["observations"]:
            observation["frame"] = f"/api/screen/frames/{observation['id']}.jpg"
        return JSONResponse(found)

    async def frame(self, request: Request) -> Response:
        obs_id = request.path_params["obs_id"]

        def read() -> bytes:
            servicer = self.rpcs.get()
            frame = servicer.screen_frame(obs_id)
            if frame is None:
                raise NotFound(f"no frame is kept for screen observation {obs_id!r}")
            return frame

        return Response(await in_thread(read), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def ask(self, request: Request) -> Response:
        body = await json_body(request)
        question = body.get("question")
        if not isinstance(question, str):
            raise InputError("'question' must be a string")
        message = pb.AskScreenRequest(question=question, since_unix=_number(body.get("since"), "since"),
                                      until_unix=_number(body.get("until"), "until"),
                                      max_tokens=int(_number(body.get("max_tokens"), "max_tokens")))
        return await sse(Pump(self.rpcs.get().AskScreen, message))

    async def state(self, request: Request) -> Response:
        message = pb.ScreenControlRequest(action="status")
        return JSONResponse(await unary(self.rpcs.get().ControlScreenWatch, message))

    async def control(self, request: Request) -> Response:
        servicer = self.rpcs.get()
        body = await json_body(request)
        action = body.get("action")
        if action == "start":
            message: Any = pb.ScreenWatchRequest(interval_seconds=_number(body.get("interval_seconds"),
                                                                          "interval_seconds"),
                                                 monitor=int(_number(body.get("monitor"), "monitor")))
            return JSONResponse(await unary(servicer.StartScreenWatch, message))
        if action == "stop":
            return JSONResponse(await unary(servicer.StopScreenWatch, pb.ScreenControlRequest()))
        if action in ("pause", "resume"):
            return JSONResponse(await unary(servicer.ControlScreenWatch, pb.ScreenControlRequest(action=action)))
        raise InputError(f"'action' must be start, stop, pause or resume, got {action!r}")


def _number(value: Any, name: str) -> float:
    """An optional non-negative number from a query string or JSON body (0 when absent)."""
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"'{name}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not number >= 0:
        raise InputError(f"'{name}' must be a non-negative number, got {value!r}")
    return number
