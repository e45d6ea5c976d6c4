"""The daemon process: load the model, listen, serve, shut down cleanly.

Endpoints, private by default:
  * a Unix socket (always), mode 0600 inside a 0700 directory: only this user can connect;
  * TCP (optional), on a loopback address only, and every call must carry `authorization: Bearer TOKEN`
    (the token file defaults to ~/.config/omnid/token), except grpc.health.v1, which reveals nothing.
Both serve the same servicer, the standard grpc.health.v1 service and server reflection (so grpcurl and
other languages need no copy of our .proto). SIGTERM/SIGINT stop the daemon: queued and running calls end
with UNAVAILABLE, the socket file is removed.

The socket is only ever taken over or removed when it is safe to: its folder must be this user's and not
writable by others (private_paths), a path that is not a socket is never deleted, a socket a live daemon
answers on is left alone (this daemon refuses to start), and on the way out a daemon removes the socket
it made itself, never one that replaced it.
"""
from __future__ import annotations

import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omnid.daemon.admission import CallLimits, pool_size
from omnid.daemon.config import DaemonConfig, cache_dir, default_token_path, private_dir
from omnid.daemon.http_app import HttpApi
from omnid.daemon.http_server import HttpServer
from omnid.daemon.interceptors import TokenAuth, UndecodableRequests
from omnid.common.private_paths import UnsafePath, check_private_dir, read_private_token, socket_identity
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.rpc_chat import ChatRpcs
from omnid.daemon.rpc_screen import ScreenRpcs
from omnid.daemon.rpc_documents import DocumentRpcs
from omnid.daemon.rpc_meetings import MeetingRpcs
from omnid.daemon.scheduler import Scheduler
from omnid.models.base import Backend, EngineUnavailable, ModelLoadError
from omnid.models.context_size import (StateSize, available_memory, gguf_state_size, mlx_state_size, plan_context,
                                       plan_sequences)
from omnid.models.loader import DEFAULT_MODEL_NOTE, choose_backend, default_model_path, load_backend
from omnid.proto import omnid_pb2, omnid_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = omnid_pb2.DESCRIPTOR.services_by_name["Omni"].full_name
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a 20-minute WAV or a 100-page PDF fits in one message


class OmniServicer(MeetingRpcs, DocumentRpcs, ScreenRpcs, ChatRpcs, omnid_pb2_grpc.OmniServicer):
    """All RPCs, one mixin per area (see rpc_base.RpcBase)."""


def parse_loopback(address: str, flag: str = "--tcp") -> tuple[str, int]:
    """Split 'HOST:PORT' and insist that HOST is a loopback address (`flag` names the option in errors)."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} takes HOST:PORT, got {address!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{flag} port must be 1-65535, got {port} in {address!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{flag} must be a loopback address (127.0.0.1 or ::1), not {host!r}: "
                         "omnid never listens on the network")
    return host, int(port)


def read_or_create_token(path: Path) -> str:
    """The token in `path` (only this user may read it, 16 bytes at least); a new random one (written with
    mode 0600) if the file does not exist. A missing folder is created 0700; an existing one is left as it is."""
    try:
        return read_private_token(path)
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("wrote a new token to %s", path)
    return token


class Daemon:
    """One model, one scheduler, one or two listening servers."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.scheduler = Scheduler(self._load_backend, self._make_cache, max_queue=config.max_queue,
                                   idle_unload_seconds=config.idle_unload_seconds)
        self.servers: list[grpc.Server] = []
        self.health = health.HealthServicer()
        self.servicer: OmniServicer | None = None
        self.http: HttpServer | None = None
        self.endpoints: list[str] = []
        self._stopped = threading.Event()
        #: (device, inode) of the socket this daemon made: the only socket file it removes on the way out.
        self._socket_made: tuple[int, int] | None = None
        self._model, self._note = config.model, ""

    def _resolve_model(self) -> None:
        """The model file (the embedded default assembled on first use) and the context to run it with: the
        model's trained context unless memory holds less; a --ctx memory cannot hold is refused here."""
        c = self.config
        if c.backend == "remote":
            return  # the engine runs the model: its context is read from it at load
        if c.remote_urls or c.remote_model or c.remote_token_file or c.remote_insecure:
            raise ModelLoadError("--remote-url, --remote-model, --remote-token-file and --remote-insecure need "
                                 "--backend remote")
        model, note = self.config.model, ""
        if not model:
            model, note = str(default_model_path(cache_dir())), DEFAULT_MODEL_NOTE
        self._model, self._note = model, note
        size: StateSize | None = None
        path = Path(model).expanduser()
        backend = choose_backend(model, self.config.backend)
        if backend == "llama.cpp" and path.is_file():
            mmproj = Path(self.config.mmproj).expanduser() if self.config.mmproj else None
            size = gguf_state_size(path, mmproj if mmproj and mmproj.is_file() else None)
        elif path.is_dir():
            size = mlx_state_size(path)
        available, reserved = available_memory(), self.config.cache_ram_bytes
        sequences = plan_sequences(self.config.parallel, self.config.context_length, size, available, reserved)
        plan = plan_context(self.config.context_length, size, available, reserved, sequences)
        self.config.context_length = plan.tokens
        self.config.context_plan = plan

    def _load_backend(self) -> Backend:
        if self.config.backend == "remote":
            return self._connect_remote()
        model, note = self._model, self._note
        backend = load_backend(model, self.config.mmproj, self.config.backend,
                               context_length=self.config.context_length, threads=self.config.threads,
                               flash_attn=self.config.flash_attn, verbose=self.config.verbose,
                               sequences=self.config.context_plan.sequences if self.config.context_plan else 1)
        if backend.info.context_length != self.config.context_length:
            log.warning("context: %d tokens asked for, the model runs with %d", self.config.context_length,
                        backend.info.context_length)
        if note:
            backend.info = replace(backend.info, note=note)
        return backend

    def _connect_remote(self) -> Backend:
        """The remote engines (--backend remote); their token read here, from a file only this user can read."""
        from omnid.models.remote_backend import DEFAULT_SEQUENCES, RemoteSettings
        c = self.config
        try:
            token = read_private_token(c.remote_token_file) if c.remote_token_file else ""
        except FileNotFoundError:
            raise ModelLoadError(f"--remote-token-file: no such file: {c.remote_token_file}") from None
        settings = RemoteSettings(tuple(c.remote_urls), c.remote_model, token, c.remote_insecure)
        return load_backend(c.model, c.mmproj, "remote", context_length=c.context_length, remote=settings,
                            sequences=c.parallel or DEFAULT_SEQUENCES)

    def _make_cache(self, backend: Backend) -> PromptCache:
        disk = self.config.cache_disk_dir
        return PromptCache(backend.info.fingerprint, self.config.cache_ram_bytes,
                           disk / _safe_name(backend.info.fingerprint) if disk else None,
                           self.config.cache_disk_bytes)

    def start(self) -> None:
        """Load the model, then listen. Raises ModelLoadError / ValueError / OSError with a clear message."""
        tcp = parse_loopback(self.config.tcp) if self.config.tcp else None
        http = parse_loopback(self.config.http, "--http") if self.config.http else None
        token = None
        if tcp or http:
            token = read_or_create_token(self.config.token_file or default_token_path())
        _claim_socket(self.config.socket_path)
        self._resolve_model()
        if http:  # before the model loads: /health answers 503 "loading" meanwhile
            self.http = HttpServer(HttpApi(self.scheduler, self.config, token or ""), *http)
            self.http.start()
        self.scheduler.start()
        self.endpoints = [f"unix:{self.config.socket_path}"] + ([f"{tcp[0]}:{tcp[1]}"] if tcp else []) \
            + ([self.http.url] if self.http else [])
        self.servicer = OmniServicer(self.scheduler, self.config, ", ".join(self.endpoints))
        if self.http:  # the web page: its login links and its status view come from this servicer
            self.servicer.attach_web(self.http.url, self.http.api.logins)
            self.http.api.status = self.servicer.status_reply
            self.http.api.rpcs.servicer = self.servicer  # the page's /api/ calls the same handlers
        self.servers.append(self._server([CallLimits(self.config.max_streams), UndecodableRequests()]))
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            self.servers[0].add_insecure_port(self.endpoints[0])
        finally:
            os.umask(old_umask)
        self._socket_made = socket_identity(self.config.socket_path)
        if tcp:
            self.servers.append(self._server([TokenAuth(token or ""), CallLimits(self.config.max_streams),
                                              UndecodableRequests()]))
            host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
            if not self.servers[1].add_insecure_port(f"{host}:{tcp[1]}"):
                raise OSError(f"could not listen on {self.config.tcp}")
        for server in self.servers:
            server.start()
        os.chmod(self.config.socket_path, 0o600)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def _server(self, interceptors: list[grpc.ServerInterceptor]) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=pool_size(self.config.max_queue, self.config.max_streams),
                                       thread_name_prefix="omnid-rpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        omnid_pb2_grpc.add_OmniServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        return server

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self, grace: float = 5.0) -> None:
        """End every call with a status, stop listening, free the model, remove the socket."""
        if self._stopped.is_set():
            return
        self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.begin_stopping()
        self.scheduler.stop()
        if self.servicer is not None:
            self.servicer.close()
        events = [server.stop(grace) for server in self.servers]
        if self.http is not None:
            self.http.stop()
        for event in events:
            event.wait(grace + 1)
        if self._socket_made is not None and socket_identity(self.config.socket_path) == self._socket_made:
            self.config.socket_path.unlink(missing_ok=True)
        self._stopped.set()


def serve(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit code."""
    daemon = Daemon(config)
    try:
        daemon.start()
    except (ModelLoadError, EngineUnavailable, ValueError, OSError) as exc:
        daemon.stop(0)
        print(f"omnid: error: {exc}", file=sys.stderr, flush=True)
        return 2
    # Everything alive now (imported modules, the loaded model's Python objects) lives as long as the process.
    # Frozen, the collector stops re-scanning it. A full collection over it takes 40-90 ms on a 2-core machine
    # (bench/gc_freeze.py), and one that lands inside a request adds that much to its time to first token;
    # with this freeze, no collection in bench/prompt_cache.py's requests took over 0.2 ms.
    gc.collect()
    gc.freeze()
    info = daemon.scheduler.backend.info  # type: ignore[union-attr]
    log.warning("omnid ready: %s (%s; %s; context %d) on %s", info.name, info.backend,
                "+".join(sorted(info.capabilities)), info.context_length, ", ".join(daemon.endpoints))
    if info.note:
        log.warning("note: %s", info.note)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=daemon.stop, daemon=True).start())
    if config.parent_pid is not None:
        threading.Thread(target=_stop_when_orphaned, args=(daemon, config.parent_pid), name="omnid-parent-watch",
                         daemon=True).start()
    daemon.wait()
    log.warning("omnid stopped")
    threading.Thread(target=_exit_if_stuck, name="omnid-exit-watch", daemon=True).start()
    return 0


#: How long the interpreter may take to exit once the daemon has stopped.
EXIT_SECONDS = 2.0


def _exit_if_stuck(timeout: float = EXIT_SECONDS) -> None:
    """End the process if it is still here `timeout` seconds after the daemon stopped.

    By then every call has ended with a status, the stores are closed and the model is freed; what can still
    hold the process is a handler thread inside work that cannot be interrupted (a decode in C, a parse), which
    Python's exit waits for: concurrent.futures joins its pool's threads at exit. SIGTERM must end the process
    within seconds whatever runs, so that wait is cut short here."""
    time.sleep(timeout)
    logging.shutdown()
    os._exit(0)


def _stop_when_orphaned(daemon: Daemon, parent: int, interval: float = 0.5) -> None:
    """Stop the daemon once `parent` is gone (the process is re-parented). Polling getppid works on Linux and
    macOS alike, and needs nothing from the parent: a parent killed by SIGKILL or an abort is noticed too."""
    while os.getppid() == parent:
        time.sleep(interval)
    log.warning("the process that started omnid (pid %d) is gone: stopping", parent)
    daemon.stop()


def _claim_socket(path: Path) -> None:
    """Make sure `path` is ours to listen on: its folder private (created 0700 if missing, checked if not),
    nothing there, or a stale socket of ours that nobody answers on (removed). Refuses, with the reason, a
    folder others control, a file that is not a socket, another user's socket and a live daemon's."""
    private_dir(path.parent)
    check_private_dir(path.parent)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafePath(f"{path} exists and is not a socket: refusing to replace it (move it away, or pass "
                         "another --socket)")
    if info.st_uid != os.getuid():
        raise UnsafePath(f"refusing {path}: the socket belongs to uid {info.st_uid}, not to you (uid {os.getuid()})")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: a daemon that died
        return
    except OSError as exc:
        raise OSError(f"cannot tell whether a daemon listens on {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise OSError(f"another omnid is already listening on {path} (stop it, or pass --socket)")


def _safe_name(fingerprint: str) -> str:
    return "".join(c for c in fingerprint if c.isalnum())[:32] or "model"
