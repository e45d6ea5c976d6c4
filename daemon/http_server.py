"""The HTTP listener (`omnid serve --http 127.0.0.1:PORT`): uvicorn serving http_app.HttpApi on a thread of
the daemon's own process, next to the gRPC servers, so both share the one scheduler and prompt cache.

The socket is bound here, before uvicorn runs, so an address in use or not allowed is a clear start-up error
(uvicorn would log it and exit its thread). Loopback only, like --tcp: server.parse_loopback refuses the rest.
"""
from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn

from omnid.daemon.http_app import HttpApi

#: Seconds a stopping server waits for open responses (streams end with an error event once the scheduler
#: stops, so this is rarely reached).
GRACEFUL_SECONDS = 3


class HttpServer:
    """One uvicorn server on a thread, serving `api` on (host, port)."""

    def __init__(self, api: HttpApi, host: str, port: int) -> None:
        self.api = api
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on connections whose socket
        # says TCP, and with Nagle on, a stream's first chunk waits until the client acknowledges the headers
        # (40 ms where the client delays that acknowledgement, as http.client does on a kept-alive connection).
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise OSError(f"could not listen on {host}:{port} for --http: {exc.strerror}") from None
        self._socket.listen(128)
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(api.asgi, lifespan="off", log_level="warning", access_log=False, ws="none",
                                timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="omnid-http", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 30.0) -> None:
        """Serve; returns once uvicorn is up (raises what stopped it from starting)."""
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.01)
            timeout -= 0.01
            if timeout <= 0:
                raise OSError("the HTTP server did not start in time")
        if not self._server.started:
            raise OSError(f"the HTTP server did not start: {self._error}")

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as exc:  # reported by start(); a running server only ends by stop()
            self._error = exc

    def begin_stopping(self) -> None:
        """New requests get 503 and /health says so, while the scheduler ends the running ones."""
        self.api.closing = True

    def stop(self, timeout: float = GRACEFUL_SECONDS + 2) -> None:
        self.api.closing = True
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()
