"""The OpenAI-compatible HTTP API: routes that convert requests into the daemon's jobs and their results back.

Every answer is a job of daemon/jobs.py submitted to the one scheduler, exactly as a gRPC call submits it, so
HTTP clients share the warm model, the queue and the prompt cache with every other client. Nothing here
evaluates a prompt or samples a token: this module checks the token, parses JSON (http_openai), submits,
follows the job from the event loop (http_jobs) and writes JSON or server-sent events.

    POST /v1/chat/completions   POST /v1/completions   POST /v1/audio/transcriptions
    GET  /v1/models[/{id}]      GET  /health (no token) GET  /metrics
    and the local web page (daemon/web): GET /, /static/..., /login?once=CODE, /api/...

The token, or the web page's session cookie, is checked in front of everything (_Guard).
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnid.common import transcript_formats
from omnid.daemon import http_openai as oa
from omnid.daemon import conversation, inputs, jobs, web
from omnid.daemon.clip_runner import ClipRunner, transcribe_file
from omnid.daemon.config import DaemonConfig
from omnid.daemon.errors import NotFound
from omnid.daemon.events import ChatDone, Done, ReasoningDelta, TextDelta, ToolCallEvent, Usage
from omnid.daemon.http_errors import HttpError, error_body, error_response, sse_error
from omnid.daemon.http_jobs import ClientGone, FollowedJob, in_thread, unless_gone
from omnid.daemon.http_metrics import CONTENT_TYPE, Meters
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.scheduler import Job, Scheduler, ShuttingDown
from omnid.daemon.web.auth import COOKIE, Logins, cookie_session
from omnid.daemon.web.rpc_call import Rpcs
from omnid.modalities import meetings
from omnid.models.base import InputError, ModelInfo, require
from omnid.proto import omnid_pb2 as pb

log = logging.getLogger(__name__)

#: The largest request body: gRPC's largest message (a 20-minute WAV, base64 included, fits).
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Served without the token: a probe learns only whether the model is loaded (like grpc.health.v1 on --tcp).
OPEN_PATHS = frozenset({"/health"}) | web.OPEN_PATHS
#: The endpoint label of /metrics for each path (anything else is "other": no label per unknown path).
ENDPOINTS = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                       "/v1/audio/transcriptions"})
#: OpenAI's response_format of a transcription -> the name in common/transcript_formats.py.
TRANSCRIPT_FORMATS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"}
#: Methods that change nothing: a cookie alone may send them (the others also need this page's own Origin).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The events a stream sends on (the others, progress, have no OpenAI chunk).
_OUTPUT = (TextDelta, ReasoningDelta, ToolCallEvent)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Endpoint = Callable[[Request], Awaitable[Response]]


class HttpApi:
    """The ASGI application (`asgi`) serving one daemon's scheduler."""

    def __init__(self, scheduler: Scheduler, config: DaemonConfig, token: str) -> None:
        self.scheduler = scheduler
        self.config = config
        self.meters = Meters(scheduler)
        self.started = int(time.time())
        #: Set as the daemon begins to stop: /health says so, new requests get 503.
        self.closing = False
        #: The web page's one-time codes and sessions (CreateLoginLink mints the codes).
        self.logins = Logins()
        #: The Status RPC's reply, for the page's status view: set by the daemon once its servicer exists.
        self.status: Callable[[], pb.StatusReply | None] = lambda: None
        #: The RPC handlers the page's /api/ calls (daemon/web/rpc_call.py); set once the servicer exists.
        self.rpcs = Rpcs()
        routes: list[BaseRoute] = [
            Route("/health", self._guarded(self.health), methods=["GET"]),
            Route("/metrics", self._guarded(self.metrics), methods=["GET"]),
            Route("/v1/models", self._guarded(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._guarded(self.model), methods=["GET"]),
            Route("/v1/chat/completions", self._guarded(self.chat_completions), methods=["POST"]),
            Route("/v1/completions", self._guarded(self.completions), methods=["POST"]),
            Route("/v1/audio/transcriptions", self._guarded(self.transcriptions), methods=["POST"]),
            *web.routes(self.logins, lambda: self.status(), self.rpcs),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _routing_error})
        self.asgi: ASGIApp = _Guard(app, token, self.meters, self.logins)

    # -- plumbing --------------------------------------------------------------------------------------------

    def _guarded(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint, its errors answered in OpenAI's shape (a client gone is logged, not answered)."""
        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(request)
            except ClientGone:
                return Response(status_code=499)
            except Exception as exc:
                return error_response(exc)
        return guarded

    def _info(self) -> ModelInfo:
        """The model's info; 503 while the daemon loads it or stops."""
        if self.closing:
            raise ShuttingDown("the daemon is shutting down")
        info = self.scheduler.info
        if info is None:
            raise HttpError(503, "the model is loading; try again in a moment", "server_error", "model_loading")
        return info

    async def _json(self, request: Request) -> Any:
        body = await request.body()
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"the request body is not valid JSON: {exc}") from None

    def _limits(self, info: ModelInfo, answering: oa.Answering) -> tuple[int, SamplingParams]:
        return inputs.answer_limits(info, self.scheduler.frame, self.config.default_max_tokens, answering.max_tokens,
                                    answering.sampling)

    # -- health, metrics, models -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        info = self.scheduler.info
        if info is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        # After an idle unload the daemon still serves: the next request loads the model again.
        return JSONResponse({"status": "ok", "model": info.name, "model_loaded": self.scheduler.loaded})

    async def metrics(self, request: Request) -> Response:
        return Response(self.meters.exposition(), media_type=CONTENT_TYPE)

    def _card(self, info: ModelInfo) -> dict[str, Any]:
        return {"id": info.name, "object": "model", "created": self.started, "owned_by": "omnid",
                "backend": info.backend, "capabilities": sorted(info.capabilities),
                "context_length": info.context_length, "loaded": self.scheduler.loaded}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._card(self._info())]})

    async def model(self, request: Request) -> Response:
        info = self._info()
        if request.path_params["model_id"] != info.name:
            raise NotFound(f"no model {request.path_params['model_id']!r}: this daemon serves {info.name!r}")
        return JSONResponse(self._card(info))

    # -- answers ---------------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = await self._json(request)
        info = self._info()
        if oa.has_media(body):  # decoding images and sounds stays off the event loop
            chat = await in_thread(oa.chat_request, body, info)
        else:  # text only: parsed at once (a thread hop would add to the time to first token)
            chat = oa.chat_request(body, info)
        max_tokens, sampling = self._limits(info, chat.answering)
        job: Job
        if inputs.is_base_model(self.scheduler.frame):  # no chat template: it continues one user turn
            system, segments = oa.single_turn(chat)
            job = jobs.generate(segments, system, max_tokens, sampling)
        else:  # the conversation job, as the gRPC conversation API runs it: the next turn hits the cache
            talk = chat.conversation(max_tokens, sampling)
            conversation.validate(talk, info)
            job = conversation.chat(talk)
        reply = oa.Reply("chat.completion", info.name)
        return await self._answer(request, job, "http-chat", reply, chat.answering, "/v1/chat/completions")

    async def completions(self, request: Request) -> Response:
        body = await self._json(request)
        info = self._info()
        completion = oa.completion_request(body)
        max_tokens, sampling = self._limits(info, completion.answering)
        job = jobs.complete(completion.prompt, max_tokens, sampling)
        reply = oa.Reply("text_completion", info.name)
        return await self._answer(request, job, "http-completion", reply, completion.answering, "/v1/completions")

    async def _answer(self, request: Request, job: Job, name: str, reply: oa.Reply, answering: oa.Answering,
                      endpoint: str) -> Response:
        """Submit an answering job; the whole reply, or a stream whose headers wait for the first token (so an
        error before it, a prompt over the context, still gets its own status)."""
        peer = request.client
        followed = FollowedJob(self.scheduler.submit(job, name, f"http:{peer.host}:{peer.port}" if peer else "http"))
        if not answering.stream:
            done: Done | ChatDone = await unless_gone(request, followed.finished(), followed)
            self.meters.answered(endpoint, done.usage)
            if reply.object == "chat.completion":
                return JSONResponse(oa.chat_completion(reply, done))
            return JSONResponse(oa.text_completion(reply, done))
        events = followed.events()
        first: Any = None
        try:
            while not isinstance(first, _OUTPUT):  # progress of a long prefill is no output
                first = await unless_gone(request, events.__anext__(), followed)
        except StopAsyncIteration:  # no delta at all (the first token ended the answer)
            first = None
        return StreamingResponse(self._stream(followed, events, first, reply, answering, endpoint),
                                 media_type="text/event-stream", headers=_SSE_HEADERS)

    async def _stream(self, followed: FollowedJob, events: AsyncIterator[Any], first: Any, reply: oa.Reply,
                      answering: oa.Answering, endpoint: str) -> AsyncIterator[bytes]:
        """The answer as server-sent events: OpenAI's chunks, usage last (when asked for), then [DONE]. A client
        that goes away cancels the job (Starlette cancels this generator: `finally` frees the decoder)."""
        usage_field = answering.include_usage
        try:
            opening = b""
            if reply.object == "chat.completion":
                opening = _sse(oa.delta_chunk(reply, {"role": "assistant", "content": ""}, None, usage_field))
            writer = _Writer(reply, usage_field)
            yield opening + (writer.event(first) if first is not None else b"")
            async for event in events:
                if isinstance(event, _OUTPUT):
                    yield writer.event(event)
            done: Done | ChatDone = followed.result
            self.meters.answered(endpoint, done.usage)
            closing = _sse(oa.delta_chunk(reply, {}, oa.finish_reason(done.stop_reason), usage_field))
            if usage_field:
                closing += _sse(oa.usage_chunk(reply, done.usage))
            yield closing + b"data: [DONE]\n\n"
        except Exception as exc:
            yield sse_error(exc)
        finally:
            followed.cancel()

    # -- transcriptions --------------------------------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        info = self._info()
        require(info, "audio", "transcribe")
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("'file' must be an uploaded audio file (multipart/form-data)")
        fmt = str(form.get("response_format") or "json")
        if fmt not in TRANSCRIPT_FORMATS:
            raise InputError(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}, got {fmt!r}")
        granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
        if any(g != "segment" for g in granularities):
            raise InputError("only segment timestamps are supported (timestamp_granularities=segment)")
        if form.get("stream") in ("true", "True", "1"):
            raise InputError("streamed transcriptions are not supported (set stream to false)")
        language = str(form.get("language") or "")
        temperature = _form_number(form.get("temperature"), "temperature")
        settings = meetings.TranscribeSettings(language=language, sampling=SamplingParams(temperature=temperature))
        data = await upload.read()
        runner = ClipRunner(self.scheduler)
        transcript = await unless_gone(request, in_thread(transcribe_file, self.scheduler, info, data, settings,
                                                          runner), runner)
        u = transcript.usage
        self.meters.answered("/v1/audio/transcriptions", Usage(
            prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens, generated_tokens=u.generated_tokens,
            time_to_first_token_ms=u.first_token_ms,
            decode_tokens_per_second=u.generated_tokens / (u.decode_ms / 1000) if u.decode_ms else 0.0))
        cues = [_Cue(s.start, s.end, s.text) for s in transcript.segments]
        if fmt in ("text", "srt", "vtt"):
            media = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
            return PlainTextResponse(transcript_formats.document(TRANSCRIPT_FORMATS[fmt], cues), media_type=media)
        body: dict[str, Any] = {"text": transcript.text,
                                "usage": {"type": "tokens", "input_tokens": u.prompt_tokens,
                                          "output_tokens": u.generated_tokens,
                                          "total_tokens": u.prompt_tokens + u.generated_tokens}}
        if fmt == "verbose_json":
            body = {"task": "transcribe", "language": language, "duration": transcript.end, "text": transcript.text,
                    "segments": [{"id": i, "seek": 0, "start": c.start_seconds, "end": c.end_seconds,
                                  "text": c.text, "tokens": [], "temperature": temperature}
                                 for i, c in enumerate(cues)],
                    "usage": {"type": "duration", "seconds": transcript.end}}
        return JSONResponse(body)


class _Writer:
    """One streamed answer's events as SSE bytes (tool calls numbered in order)."""

    def __init__(self, reply: oa.Reply, include_usage: bool) -> None:
        self.reply = reply
        self.include_usage = include_usage
        self.text = oa.delta_writer(reply, "content", include_usage)
        chat = reply.object == "chat.completion"
        self.reasoning = oa.delta_writer(reply, "reasoning_content", include_usage) if chat else self.text
        self.calls = 0

    def event(self, event: Any) -> bytes:
        if isinstance(event, TextDelta):
            return self.text(event.text)
        if isinstance(event, ReasoningDelta):  # the thinking, as llama-server and vLLM stream it
            return self.reasoning(event.text)
        if isinstance(event, ToolCallEvent):  # each call whole, once complete
            self.calls += 1
            call = oa.tool_call(event.call, self.calls - 1)
            return _sse(oa.delta_chunk(self.reply, {"tool_calls": [call]}, None, self.include_usage))
        return b""  # events OpenAI has no chunk for


class _Cue:
    """A transcript segment as common/transcript_formats reads it."""

    __slots__ = ("start_seconds", "end_seconds", "text")

    def __init__(self, start: float, end: float, text: str) -> None:
        self.start_seconds, self.end_seconds, self.text = start, end, text


def _form_number(value: Any, name: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        return float(str(value))
    except ValueError:
        raise InputError(f"'{name}' must be a number, got {value!r}") from None


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    else:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse(error_body(message, "invalid_request_error", "not_found" if exc.status_code == 404
                                   else "method_not_allowed"), status_code=exc.status_code, headers=exc.headers)


class _Guard:
    """Every request first passes here: loopback Host and Origin, the token or the web page's session cookie
    (except OPEN_PATHS), the body size limit (413), and the request counter of /metrics by endpoint and status.
    """

    def __init__(self, app: ASGIApp, token: str, meters: Meters, logins: Logins) -> None:
        self.app = app
        self._expected = token.encode()
        self.meters = meters
        self.logins = logins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            if not (_loopback_host(headers.get(b"host", b"127.0.0.1"))
                    and (b"origin" not in headers or _loopback_origin(headers[b"origin"]))):
                # DNS rebinding: a web page on another name that resolves to 127.0.0.1 reaches this port
                # from the user's browser; its requests carry that name as Host (or Origin), never a loopback one.
                refusal = HttpError(403, "only loopback Host and Origin names are served (localhost, 127.0.0.1, "
                                    "[::1])", code="forbidden_host")
                await error_response(refusal)(scope, receive, counted)
                return
            refused = None if path in OPEN_PATHS else self._refusal(scope["method"], path, headers)
            if refused is not None:
                await refused(scope, receive, counted)
                return
            length = headers.get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                await error_response(_too_large())(scope, receive, counted)
                return
            await self.app(scope, _limited(receive), counted)
        finally:
            self.meters.requests.labels(endpoint, str(status)).inc()

    def _refusal(self, method: str, path: str, headers: dict[bytes, bytes]) -> Response | None:
        """Why this request may not go on (None: it may): neither the token nor a session (401), or a session
        cookie on a request that changes something without this page's own Origin (403). SameSite=Strict keeps
        other sites' pages from sending the cookie; the Origin check also keeps out a page served on another
        loopback port (the same "site" to a browser)."""
        if self._authorized(headers.get(b"authorization", b"")):
            return None
        session = cookie_session(headers.get(b"cookie", b""))
        if session and self.logins.valid(session):
            if method in _SAFE_METHODS or _same_origin(headers.get(b"origin", b""), headers.get(b"host", b"")):
                return None
            return error_response(HttpError(403, "a request that changes something must come from the page "
                                            "itself (its Origin)", "permission_error", "forbidden_origin"))
        if web.is_page(path):
            return web.refusal_page(401, "This page needs a login.")
        refusal = HttpError(401, "missing or wrong token: send Authorization: Bearer TOKEN (the token is in "
                            "omnid's --token-file, ~/.config/omnid/token by default), or log in with the "
                            f"{COOKIE} cookie of `omni web`", code="invalid_api_key")
        return error_response(refusal, {"WWW-Authenticate": "Bearer"})

    def _authorized(self, given: bytes) -> bool:
        # The scheme is case-insensitive (RFC 7235 section 2.1), as on the gRPC TCP endpoint.
        scheme, _, credentials = given.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._expected)


def _loopback_host(value: bytes) -> bool:
    """Whether a Host header (name[:port]) names this machine's loopback interface."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:port
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    parts = name.split(".")
    return name in ("localhost", "::1") or (
        len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts))


def _loopback_origin(value: bytes) -> bool:
    """Whether an Origin header (scheme://host[:port]) is a page served from loopback."""
    scheme, sep, rest = value.decode("latin-1").strip().lower().partition("://")
    return bool(sep) and scheme in ("http", "https") and _loopback_host(rest.encode("latin-1"))


def _same_origin(origin: bytes, host: bytes) -> bool:
    """Whether an Origin header is this server itself (scheme http, the request's own Host, port included)."""
    return bool(host) and origin.strip().lower() == b"http://" + host.strip().lower()


def _too_large() -> HttpError:
    return HttpError(413, f"the request body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB",
                     code="request_too_large")


def _limited(receive: Receive) -> Receive:
    """`receive` that refuses a body (sent without a Content-Length) once it passes MAX_BODY_BYTES."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise _too_large()
        return message
    return limited

