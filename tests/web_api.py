"""A plain-HTTP client of the page's /api/, for tests: JSON requests, multipart uploads, SSE read as it comes.

http.client on purpose: the wire (statuses, content types, each `data:` event as the server flushed it) is what
the tests look at, and a live transcript must be read event by event, not as one body at the end.
"""
from __future__ import annotations

import http.client
import json
import uuid
from typing import Any, Iterator


class WebApi:
    """Requests to one daemon's HTTP listener, with its token (token=None: without)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def _headers(self, token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json", token: str | None = "") -> tuple[int, str, bytes]:
        """(status, content type, body); `body` is sent as JSON, `raw` as it is."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=180)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            headers = self._headers(self.token if token == "" else token,
                                    {"Content-Type": content_type} if data is not None else None)
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, _, data = self.request(method, path, body)
        assert status == expect, (status, data[:500])
        return json.loads(data)

    def error(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
              content_type: str = "application/json") -> tuple[int, str]:
        """A refused request's status and message (in daemon/http_errors.py's shape, checked)."""
        status, media, data = self.request(method, path, body, raw=raw, content_type=content_type)
        assert 400 <= status < 500 and media.startswith("application/json"), (status, media, data[:300])
        error = json.loads(data)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        return status, error["message"]

    def events(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
               content_type: str = "application/json") -> Iterator[dict[str, Any]]:
        """The `data:` events of a server-sent-event answer, each as soon as it arrives."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            headers = self._headers(self.token, {"Content-Type": content_type} if data is not None else None)
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            assert response.status == 200, (response.status, response.read()[:500])
            assert response.getheader("Content-Type", "").startswith("text/event-stream")
            while True:
                line = response.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])
        finally:
            conn.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, as a browser's FormData sends it."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, mime) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: {mime}\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
