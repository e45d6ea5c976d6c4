"""The Python client library: `OmniClient` talks to a running omnid over its socket.

    from omnid.clients.client import OmniClient, image, text
    with OmniClient() as omni:                         # the default Unix socket, or OMNID_SOCKET
        for piece in omni.stream(image("photo.png"), text("What is this?")):
            print(piece, end="", flush=True)
        answer = omni.ask(text("Say hello"))           # the whole answer and its usage

The client is assembled like the servicer: one mixin per area (documents, meetings, screen) on top of
CoreClient, which owns the channel.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc
import numpy as np

from omnid.clients.chat import ChatClient
from omnid.clients.documents import DocumentsClient
from omnid.clients.meetings import MeetingsClient
from omnid.common.paths import default_socket_path, default_token_path
from omnid.common.private_paths import check_socket
from omnid.proto import omnid_pb2 as pb
from omnid.proto import omnid_pb2_grpc
from omnid.clients.screen import ScreenClient

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class DaemonNotRunning(ConnectionError):
    """No daemon answers at the endpoint; the message says how to start one."""


class OmniError(grpc.RpcError):
    """The daemon refused or failed a call: `code` is its gRPC status, `details` its one-line message.

    Every call of the client raises this instead of grpc's own call objects, so callers catch one type of
    this library (it stays a grpc.RpcError, with the same code() and details(), for code written against grpc).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


def _translate(exc: grpc.RpcError) -> OmniError:
    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAUTHENTICATED:
        details += " (the token comes from --token-file, OMNID_TOKEN or ~/.config/omnid/token)"
    return OmniError(code, details or code.name.lower())


class _Stream:
    """A server-streaming call whose errors arrive as OmniError; cancel() ends it early."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def cancel(self) -> None:
        self._call.cancel()

    def __getattr__(self, name: str) -> Any:  # the rest of grpc's call object (is_active, time_remaining, ...)
        return getattr(self._call, name)


class _Stub:
    """The generated stub, with every call's grpc errors turned into OmniError."""

    def __init__(self, stub: omnid_pb2_grpc.OmniStub) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = method(*args, **kwargs)
            except grpc.RpcError as exc:
                raise _translate(exc) from None
            return _Stream(result) if isinstance(result, Iterator) else result
        return call


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def image(source: str | Path | bytes) -> pb.Part:
    """An image part from a file path or encoded bytes."""
    return pb.Part(image=pb.Image(data=_read(source)))


def audio(source: str | Path | bytes) -> pb.Part:
    """An audio part from a file path or encoded bytes (WAV, FLAC, OGG, MP3)."""
    return pb.Part(audio=pb.Audio(encoded=_read(source)))


def pcm(samples: np.ndarray, sample_rate: int) -> pb.Part:
    """An audio part from float samples: shape (n,) mono or (n, channels)."""
    samples = np.asarray(samples, dtype="<f4")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return pb.Part(audio=pb.Audio(pcm=pb.Pcm(f32le=samples.tobytes(), sample_rate=sample_rate, channels=channels)))


def _read(source: str | Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else Path(source).expanduser().read_bytes()


@dataclass
class Answer:
    text: str
    stop_reason: str
    usage: pb.Usage


def usage_dict(usage: pb.Usage) -> dict[str, float]:
    """Usage as plain numbers (for --json output and logs)."""
    return {field.name: getattr(usage, field.name) for field in usage.DESCRIPTOR.fields}


class CoreClient:
    """The channel, and the core calls: generate, ask, status, prefill, unpin, unload."""

    def __init__(self, endpoint: str | None = None, token: str | None = None, *,
                 connect_timeout: float = 3.0) -> None:
        """endpoint: 'unix:/path' (default: the daemon's socket) or a loopback 'HOST:PORT' (needs a token:
        `token`, else the OMNID_TOKEN environment variable, else the file ~/.config/omnid/token that
        `omnid serve --tcp` writes)."""
        self.endpoint = endpoint or f"unix:{default_socket_path()}"
        _check_unix_endpoint(self.endpoint)
        token = token or os.environ.get("OMNID_TOKEN")
        if not token and not self.endpoint.startswith("unix:"):
            token = read_token(default_token_path(), missing_ok=True)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(self.endpoint, options=options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise DaemonNotRunning(
                f"no omnid daemon answers at {self.endpoint}. Start one with `omnid serve` "
                "(or `omnid serve --model MODEL.gguf --mmproj MMPROJ.gguf`), or point the client at it "
                "with --socket / OMNID_SOCKET") from None
        #: Any: the generated stub has no type hints; _Stub turns its grpc errors into OmniError.
        self.stub: Any = _Stub(omnid_pb2_grpc.OmniStub(self.channel))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "OmniClient":
        return self  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, *parts: pb.Part, system: str = "", max_tokens: int = 0,
                 sampling: pb.Sampling | None = None) -> Iterator[pb.GenerateEvent]:
        """The raw event stream of a Generate call (deltas, then one `done`)."""
        request = pb.GenerateRequest(system=system, parts=list(parts), max_tokens=max_tokens,
                                     sampling=sampling or pb.Sampling())
        return self.stub.Generate(request, metadata=self.metadata)

    def stream(self, *parts: pb.Part, **kwargs) -> Iterator[str]:
        """Text pieces of the answer as they come."""
        for event in self.generate(*parts, **kwargs):
            if event.WhichOneof("event") == "delta":
                yield event.delta

    def ask(self, *parts: pb.Part, **kwargs) -> Answer:
        """The whole answer and its usage."""
        for event in self.generate(*parts, **kwargs):
            if event.WhichOneof("event") == "done":
                return Answer(event.done.text, event.done.stop_reason, event.done.usage)
        raise RuntimeError("the stream ended without a final message")

    def status(self) -> pb.StatusReply:
        return self.stub.Status(pb.StatusRequest(), metadata=self.metadata)

    def prefill(self, *parts: pb.Part, system: str = "", pin: bool = False) -> pb.PrefillReply:
        return self.stub.Prefill(pb.PrefillRequest(system=system, parts=list(parts), pin=pin),
                                 metadata=self.metadata)

    def unpin(self, prefix_id: str) -> bool:
        return self.stub.Unpin(pb.UnpinRequest(prefix_id=prefix_id), metadata=self.metadata).was_pinned

    def login_link(self) -> str:
        """A one-time link that logs a browser into the daemon's web page (FAILED_PRECONDITION without --http)."""
        return self.stub.CreateLoginLink(pb.LoginLinkRequest(), metadata=self.metadata).url

    def unload(self) -> bool:
        """Free the model's memory now (the next request loads it again); True if it was loaded."""
        return self.stub.Unload(pb.UnloadRequest(), metadata=self.metadata).was_loaded


def _check_unix_endpoint(endpoint: str) -> None:
    """Refuse (UnsafePath, a PermissionError naming the path and why) a socket another user owns or could have
    put there, before anything is sent: a squatter on the socket's folder would receive the prompts
    (common/private_paths.py). A missing folder means no daemon, said at once: waiting for one to appear in a
    folder nobody checked is how a squatter would get in."""
    if not endpoint.startswith("unix:"):
        return  # TCP (loopback, token) or an abstract socket: no file to check
    path = Path(endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint[len("unix:"):])
    try:
        check_socket(path)
    except FileNotFoundError:
        raise DaemonNotRunning(f"no omnid daemon answers at {endpoint} ({path.parent} does not exist). Start one "
                               "with `omnid serve`, or point the client at it with --socket / OMNID_SOCKET") from None


class OmniClient(MeetingsClient, DocumentsClient, ChatClient, CoreClient, ScreenClient):
    """The full client: core calls plus one mixin per area."""


def read_token(path: str | Path, missing_ok: bool = False) -> str | None:
    """The token in a token file (None for a missing file with missing_ok)."""
    path = Path(path).expanduser()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if missing_ok:
            return None
        raise FileNotFoundError(errno.ENOENT, "no token file (`omnid serve --tcp` writes one)", str(path)) from None


def connect(socket: str | Path | None = None, tcp: str | None = None, token_file: str | Path | None = None,
            token: str | None = None) -> OmniClient:
    """A client for the CLI's connection flags (the token: token_file, else OMNID_TOKEN, else the default file)."""
    if token_file and not token:
        token = read_token(token_file)
    if tcp:
        return OmniClient(tcp, token)
    return OmniClient(f"unix:{socket}" if socket else None, token)


def parts_for(question: str, images: Sequence[str] = (), sounds: Sequence[str] = ()) -> list[pb.Part]:
    """Media first, then the question: the order that lets the cache reuse the media for the next question."""
    return [image(p) for p in images] + [audio(p) for p in sounds] + ([text(question)] if question else [])
