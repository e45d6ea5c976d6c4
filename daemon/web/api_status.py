"""GET /api/status: the daemon's Status RPC reply as JSON, for the page's status view.

The reply is the servicer's own StatusReply (the same message `omni status` and the menubar read), turned into
JSON with every field present, so fields added to Status later (sequences, queue classes) reach the page
without a change here.
"""
from __future__ import annotations

from typing import Callable

from google.protobuf.json_format import MessageToDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omnid.daemon.http_errors import HttpError, error_response
from omnid.daemon.http_jobs import in_thread
from omnid.proto import omnid_pb2 as pb

StatusSource = Callable[[], "pb.StatusReply | None"]


def routes(status: StatusSource) -> list[Route]:
    async def get_status(request: Request) -> Response:
        try:
            reply = await in_thread(status)  # the process's memory and the cache's counters: off the loop
            if reply is None:
                raise HttpError(503, "the daemon is starting; try again in a moment", "server_error",
                                "model_loading")
            return JSONResponse(MessageToDict(reply, preserving_proto_field_name=True,
                                              always_print_fields_with_no_presence=True))
        except Exception as exc:
            return error_response(exc)
    return [Route("/api/status", get_status, methods=["GET"])]
