"""One OpenAI-compatible engine over HTTP (vLLM, SGLang, llama-server, llama-cpp-python's server), stdlib only.

Why the standard library: a request's added time to first token is what this layer costs, and http.client on
a fresh connection costs ~0.1 ms on loopback; nothing here needs more than JSON requests and a server-sent
event stream. Why a reader thread per stream: the daemon's cancellation is a polled flag, and a blocking read
cannot poll; the caller waits on a queue for a short while at a time and, once cancelled, shuts the socket,
which ends the reader's read at once (the engine sees the disconnect and stops generating).

Security: https is verified against the system's certificate authorities; the token goes in the Authorization
header only and never into a message, a log line or an exception.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import queue
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator
from urllib.parse import urlsplit

from omnid.models.base import ContextOverflow, EngineUnavailable, InputError, ModelLoadError

#: How long a queue wait lasts before the caller polls its cancellation flag again.
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Timeouts:
    #: Connecting (a dead host fails fast).
    connect: float = 5.0
    #: Waiting for the next byte of an answer: a long prompt's prefill on the engine comes before the first one.
    read: float = 300.0


class NotConnected(OSError):
    """The engine could not be connected to: nothing was sent, so any request may go to another engine."""


class HttpError(Exception):
    """The engine answered with an HTTP error status (4xx: the request; 5xx: the engine)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def check_url(url: str, insecure: bool) -> str:
    """The base URL without a trailing slash; ModelLoadError for anything but http(s), or plain http to a host
    that is not loopback without `insecure` (the prompts, screen frames and recordings would cross the network
    in the clear)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelLoadError(f"--remote-url must be http(s)://HOST[:PORT]/v1, not {url!r}")
    if parts.username or parts.password:
        raise ModelLoadError("--remote-url must not carry a user or password: pass --remote-token-file")
    if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname):
        raise ModelLoadError(f"plain http to {parts.hostname} would send prompts, screen frames and recordings "
                             "unencrypted: use https, or pass --remote-insecure if this network is yours")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Engine:
    """One engine at one base URL (".../v1"): JSON calls and streamed chat completions.

    Thread-safe: every call opens its own connection. `in_flight` and the failure bookkeeping are the router's.
    """

    def __init__(self, url: str, token: str = "", *, insecure: bool = False, timeouts: Timeouts = Timeouts()) -> None:
        self.url = check_url(url, insecure)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/")
        #: The server's root (".../v1" cut off): llama-server's /props and /tokenize, vLLM's /tokenize.
        self.root_path = self._path[:-3] if self._path.endswith("/v1") else self._path
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._ssl = ssl.create_default_context() if self._https else None
        self.timeouts = timeouts
        self.in_flight = 0
        self.served = 0
        #: time.monotonic() before which the router skips this engine (it failed); 0 = healthy.
        self.dead_until = 0.0

    def __repr__(self) -> str:  # never the token
        return f"Engine({self.url})"

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeouts.connect, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeouts.connect)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise NotConnected(exc.errno, f"{_why(exc)}") from None
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.timeouts.read)
        return conn

    def _send(self, method: str, path: str, body: Any, accept: str = "application/json"
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Connect and send; OSError before anything was sent means the request never reached the engine."""
        conn = self._connect()
        data = None if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            conn.request(method, path, body=data, headers={**self._headers, "Accept": accept})
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status >= 400:
            message = _error_message(response.read())
            conn.close()
            raise HttpError(response.status, message)
        return conn, response

    def call(self, method: str, path: str, body: Any = None, *, root: bool = False) -> Any:
        """One JSON request (path under the base URL, or under the server's root); the decoded answer.

        Raises HttpError for an error status, OSError / http.client.HTTPException when the engine is unreachable.
        """
        conn, response = self._send(method, (self.root_path if root else self._path) + path, body)
        try:
            return json.loads(response.read() or b"null")
        finally:
            conn.close()

    def stream_chat(self, body: dict, should_stop: Callable[[], bool]) -> Generator[dict, None, None]:
        """POST /chat/completions with stream=true: each event's JSON, until [DONE] or the end of the stream.

        Closing the iterator (or should_stop turning True) shuts the connection at once. A stream that ends
        without [DONE], an unreadable event or no byte for `timeouts.read` seconds raises EngineUnavailable;
        a failure to connect or send raises OSError (nothing reached the engine: the caller may retry).
        """
        conn, response = self._send("POST", self._path + "/chat/completions", body, accept="text/event-stream")
        events: queue.Queue[Any] = queue.Queue()
        reader = threading.Thread(target=_read_events, args=(response, events), name="omnid-remote-stream",
                                  daemon=True)
        reader.start()
        try:
            while True:
                try:
                    item = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if should_stop():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise EngineUnavailable(f"the remote engine at {self.url} went away mid-answer ({_why(item)})")
                yield item
                if should_stop():
                    return
        finally:
            _shut(conn)


_DONE = object()


def _read_events(response: http.client.HTTPResponse, events: "queue.Queue[Any]") -> None:
    """The reader thread: server-sent events' data lines, decoded, then _DONE (or the exception that ended it)."""
    try:
        while True:
            line = response.readline()
            if not line:
                raise ConnectionError("the stream ended before [DONE]")
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (": ping"), event names
            data = line[5:].strip()
            if data == b"[DONE]":
                events.put(_DONE)
                return
            event = json.loads(data)
            if isinstance(event, dict) and "error" in event:
                raise ConnectionError(_error_message(data))
            events.put(event)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, whatever it was
        events.put(exc)


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, NotConnected):
        return str(exc.strerror)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted: {exc.verify_message}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_message(raw: bytes) -> str:
    """The one line an OpenAI-style error body says ({"error": {"message": ...}}, {"detail": ...}, text)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip().splitlines()[0][:300] if raw.strip() else "no details"
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error).splitlines()[0][:300] if str(error) else "no details"
    return str(body)[:300]


def unreachable(url: str, exc: BaseException) -> EngineUnavailable:
    """The error for a request the engine at `url` never answered (refused, reset, timed out, 5xx)."""
    if isinstance(exc, HttpError):
        return EngineUnavailable(f"the remote engine at {url} failed ({exc})")
    return EngineUnavailable(f"the remote engine at {url} cannot be reached ({_why(exc)})")


def refused_request(exc: HttpError, context_length: int, estimate: int) -> Exception:
    """A 4xx answer as the daemon's own error: the prompt too long (ContextOverflow), else InputError."""
    lowered = exc.message.lower()
    if exc.status in (401, 403):
        return EngineUnavailable(f"the remote engine refused the token (HTTP {exc.status})")
    if "context" in lowered or "too long" in lowered or ("maximum" in lowered and "token" in lowered):
        return ContextOverflow(max(estimate, context_length + 1), context_length)
    return InputError(f"the remote engine refused the request: {exc.message}")
