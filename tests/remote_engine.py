"""A real OpenAI-compatible engine for the remote backend's tests: llama-cpp-python's own server on a tiny GGUF.

Not a mock: the same server people run (`python -m llama_cpp.server --model X.gguf`), in its own process, on a
free loopback port, so a test can kill it mid-answer and start it again on the same port.

None outlives the tests: each runs in its own process group, killed whole by `kill`, by `kill_all` (the test
modules' teardown fixtures call it, for a test that failed before its own `finally`) and, should pytest itself
die (SIGKILL, a CI timeout), by the kernel (PR_SET_PDEATHSIG). A server left behind is no small thing: one that
keeps decoding after a disconnect was found at 95% CPU long after its tests had ended.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Every server started and not yet killed (kill_all's list).
RUNNING: set["LlamaServer"] = set()


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGKILL when the process (the thread) that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def kill_all() -> None:
    """Kill every server still running (a test's teardown: whatever a failed test left)."""
    for server in list(RUNNING):
        server.kill()


atexit.register(kill_all)


class LlamaServer:
    """`python -m llama_cpp.server` on `model`, at http://127.0.0.1:PORT/v1; with `mmproj`, through its llava
    chat handler (libmtmd), which takes images (image_url) but not sound (its schema refuses input_audio)."""

    def __init__(self, model: Path, *, mmproj: Path | None = None, n_ctx: int = 4096, api_key: str = "",
                 log: Path | None = None) -> None:
        pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
        self.model = model
        self.mmproj = mmproj
        self.n_ctx = n_ctx
        self.api_key = api_key
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0) -> "LlamaServer":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--verbose", "false",
               "--interrupt_requests", "false"]  # its default cuts the answer under way short at the next request
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        if self.mmproj:
            cmd += ["--clip_model_path", str(self.mmproj), "--chat_format", "llava-1-5"]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        parent = os.getpid()
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=lambda: _die_with_parent(parent))
        RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            if self.answers():
                return self
            time.sleep(0.2)
        self.kill()
        raise TimeoutError("llama_cpp.server did not start in time")

    def answers(self) -> bool:
        request = urllib.request.Request(self.url + "/models",
                                         headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return bool(json.loads(response.read()).get("data"))
        except urllib.error.HTTPError:
            return True  # it answers (a 401 without the key)
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL: the engine vanishes mid-whatever, as a crashed or unplugged server does."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group: whatever it started goes too
            except ProcessLookupError:
                pass
            self.process.wait(10)
        self.process = None
        RUNNING.discard(self)
