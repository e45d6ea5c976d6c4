"""Fixtures shared by the whole suite: the tiny random-weight omni model and real daemons on real sockets.

`daemon` is one `omnid serve` subprocess for the session (start-up is paid once); tests that stop, crash or
reconfigure a daemon start their own with `start_daemon(...)`. Everything a daemon writes (socket, prompt
cache, SQLite stores) lives under a pytest temp folder.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _common import DaemonProcess, start_daemon as _start_daemon  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402
from omnid.models.gguf_test_model import TestModelPaths, write_test_model  # noqa: E402

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> TestModelPaths:
    """The tiny omni model: a hybrid Mamba2 + attention + MoE text GGUF (nemotron_h_moe, as the target model) + one
    mmproj with a vision and a Parakeet audio encoder. Its sequence cannot be cut back, only restored."""
    return write_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def test_model_llama(tmp_path_factory: pytest.TempPathFactory) -> TestModelPaths:
    """The same omni model with an attention-only `llama` decoder: for what only such a decoder can do (cutting
    the live sequence back), and to check cache correctness on both kinds of decoder."""
    return write_test_model(tmp_path_factory.mktemp("model-llama"), decoder="llama")


class RunningDaemon:
    """A daemon subprocess and what a test needs to talk to it."""

    def __init__(self, process: DaemonProcess, tmp: Path) -> None:
        self.process = process
        self.tmp = tmp
        self.socket = process.socket
        self.endpoint = f"unix:{process.socket}"

    def client(self) -> OmniClient:
        return OmniClient(self.endpoint)

    def stop(self) -> None:
        self.process.stop()


DaemonFactory = Callable[..., RunningDaemon]


@pytest.fixture(scope="session")
def start_daemon(tmp_path_factory: pytest.TempPathFactory, test_model: TestModelPaths) -> Iterator[DaemonFactory]:
    """start_daemon(*extra_flags, model=..., mmproj=...) -> RunningDaemon, stopped at the end of the session."""
    started: list[RunningDaemon] = []

    def start(*extra: str, model: str | None = None, mmproj: str | None = None,
              backend: str = "auto") -> RunningDaemon:
        tmp = tmp_path_factory.mktemp("daemon")
        model_args = {"model": str(test_model.text) if model is None else model,
                      "mmproj": str(test_model.mmproj) if mmproj is None else mmproj, "backend": backend}
        flags = ["--threads", "1", "--ctx", "4096", "--allow-read", str(tmp_path_factory.getbasetemp()),
                 "--cache-disk", str(tmp / "prompt-cache"), *extra]
        daemon = RunningDaemon(_start_daemon(tmp, model_args, flags), tmp)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="session")
def daemon(start_daemon: DaemonFactory) -> RunningDaemon:
    """The session's shared daemon on the tiny omni model."""
    return start_daemon()


@pytest.fixture()
def client(daemon: RunningDaemon) -> Iterator[OmniClient]:
    with daemon.client() as c:
        yield c


def png_bytes(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A random RGB image as PNG bytes (different seeds, different pixels)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def wav_bytes(frequency: float, seconds: float = 1.5, rate: int = 16000, channels: int = 1) -> bytes:
    """A tone with a little noise as WAV bytes."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(int(frequency)).standard_normal(len(t))
    tone = 0.4 * np.sin(2 * np.pi * frequency * t) + 0.02 * noise
    samples = np.repeat(tone[:, None], channels, axis=1).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV")
    return out.getvalue()


@pytest.fixture(scope="session", params=["llama.cpp", "mlx"])
def backend_daemon(request, daemon: RunningDaemon, start_daemon: DaemonFactory,
                   tmp_path_factory: pytest.TempPathFactory) -> RunningDaemon:
    """The same daemon tests on each backend: the shared llama.cpp daemon, and one on the tiny mlx-vlm model
    (skipped where mlx-vlm is not installed)."""
    if request.param == "llama.cpp":
        return daemon
    pytest.importorskip("mlx_vlm")
    from omnid.models.mlx_test_model import write_mlx_test_model
    folder = write_mlx_test_model(tmp_path_factory.mktemp("mlx-model"))
    return start_daemon(model=str(folder), mmproj="", backend="mlx")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
