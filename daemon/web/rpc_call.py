"""The page's API calls the daemon's own RPC handlers: one code path for gRPC clients and the web page.

Documents, meetings and the screen history are served by the RPC mixins (daemon/rpc_documents.py,
rpc_meetings.py, rpc_screen.py): they validate, submit the jobs, write the stores and convert the results.
Rather than a second copy of that work for HTTP, the /api/ endpoints call those same methods with a
`CallContext` (the three things a handler asks of grpc.ServicerContext: abort, add_callback, is_active) and
turn the protobuf messages they return into JSON. The handlers block (SQLite, the PDF reader, a job's
events), so they run on worker threads; the event loop only awaits them.

Errors keep the HTTP API's shapes (daemon/http_errors.py): a handler aborts while handling an exception, and
when that exception is of the kind the abort says, it decides the status, as for /v1/; any other abort (a PDF
with too many pages) maps its gRPC code.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, NoReturn

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from omnid.daemon.http_errors import HttpError, described, error_response, sse_error
from omnid.daemon.rpc_base import status_for
from omnid.models.base import InputError

if TYPE_CHECKING:
    from omnid.daemon.server import OmniServicer

log = logging.getLogger(__name__)

#: (HTTP status, OpenAI error type, code) of an abort that carries only a gRPC status.
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_request"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "unsupported"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "context_length_exceeded"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, "invalid_request_error", "request_too_large"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "unavailable"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()

Endpoint = Callable[[Request], Awaitable[Response]]


class Aborted(Exception):
    """A handler ended the call: the HTTP status and error body it maps to."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


class CallContext:
    """What the RPC handlers use of grpc.ServicerContext, for one call from the page.

    `cancel()` is the client going away: the callbacks the handler registered run (they cancel its job, stop
    a PDF reader or a recorder), as gRPC runs them when a call ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._active = True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        handling = sys.exc_info()[1]
        if handling is not None and status_for(handling)[0] == code:  # the kind of failure, the handler's words
            status, body = described(handling)
            body["error"]["message"] = details
        else:
            status, type_, error_code = _BY_CODE.get(code, (500, "server_error", "internal_error"))
            body = {"error": {"message": details, "type": type_, "param": None, "code": error_code}}
        raise Aborted(status, body)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._active:
                self._callbacks.append(callback)
                return True
        callback()
        return False

    def is_active(self) -> bool:
        return self._active

    def invocation_metadata(self) -> tuple[()]:
        """No gRPC metadata: the scheduler's per-client cap then counts the page as its peer (below)."""
        return ()

    def peer(self) -> str:
        return "web-page"

    def cancel(self) -> None:
        with self._lock:
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a call's cancel callback failed")


class Rpcs:
    """The daemon's servicer, once it exists (the HTTP listener starts before the model is loaded)."""

    def __init__(self) -> None:
        self.servicer: OmniServicer | None = None

    def get(self) -> OmniServicer:
        if self.servicer is None:
            raise HttpError(503, "the model is loading; try again in a moment", "server_error", "model_loading")
        return self.servicer


def to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as the page reads it: field names as in proto/omnid.proto, defaults included."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def guarded(endpoint: Endpoint) -> Endpoint:
    """The endpoint, its errors answered as JSON in the shapes of daemon/http_errors.py."""
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Aborted as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except Exception as exc:
            return error_response(exc)
    return run


async def unary(method: Callable[[Any, Any], Message], request: Message) -> dict[str, Any]:
    """Call a unary RPC handler on a worker thread; its reply as JSON."""
    context = CallContext()
    reply = await asyncio.to_thread(method, request, context)
    return to_json(reply)


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Blocking work (SQLite, image encoding) off the event loop."""
    return await asyncio.to_thread(fn)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is {}); InputError otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    return body


class Pump:
    """A streaming handler run to its end on its own thread, its messages handed to the event loop.

    The thread owns the generator (only it calls next() and close()), so a client that leaves mid-stream
    cancels the context, the handler's job stops, and the thread closes the generator itself."""

    def __init__(self, method: Callable[[Any, Any], Iterator[Message]], request: Message,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.context = CallContext()
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._thread = threading.Thread(target=self._run, args=(method, request), name="omnid-web-call",
                                        daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server stopped
            self.context.cancel()

    def _run(self, method: Callable[[Any, Any], Iterator[Message]], request: Message) -> None:
        stream: Iterator[Message] = iter(())
        try:
            stream = method(request, self.context)
            for message in stream:
                if not self.context.is_active():
                    break
                self._put(message)
        except BaseException as exc:
            self._put(exc)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a web call's stream failed")
            self._put(_END)

    async def messages(self) -> AsyncGenerator[Message, None]:
        """The handler's messages; raises Aborted (or what else ended it)."""
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.context.cancel()


async def sse(pump: Pump, convert: Callable[[Message], dict[str, Any] | None] = to_json) -> Response:
    """The handler's messages as server-sent events (`data: JSON`). The headers wait for the first message, so
    a request refused before it (a bad id, an empty question) gets its own 4xx JSON answer; an error later is
    one last `data: {"error": ...}` event."""
    messages = pump.messages()
    try:
        first = await messages.__anext__()
    except StopAsyncIteration:
        first = None

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield event_bytes(convert(first))
            async for message in messages:
                yield event_bytes(convert(message))
        except Aborted as exc:
            yield event_bytes(exc.body)
        except Exception as exc:
            yield sse_error(exc)
        finally:
            await messages.aclose()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def event_bytes(body: dict[str, Any] | None) -> bytes:
    """One server-sent event carrying `body` as JSON (None: nothing)."""
    if body is None:
        return b""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
