"""Shared by the benchmarks: the model to run on, and a real daemon subprocess to run it in."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from omnid.models.registry import backend_names


def greedy_step(session: Any) -> int:
    """Decode a DecoderSession's next greedy token and return it, end of generation skipped: random weights may
    end early, and a benchmark (or a test) that streams wants decode steps."""
    session.check_cancelled()
    logits = session.backend.logits()
    token = int(np.argmax(logits))
    if session.backend.is_end_of_generation(token):
        logits[token] = -np.inf
        token = int(np.argmax(logits))
    session.append_generated(token)
    return token


def add_model_flags(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    """--model/--mmproj/--backend/--decoder/--threads: a real model to measure, or (default) the tiny test model."""
    parser.add_argument("--model", default="", help="a .gguf or MLX folder (default: the tiny test model)")
    parser.add_argument("--mmproj", default="")
    parser.add_argument("--backend", default="auto", choices=["auto", *backend_names()])
    parser.add_argument("--decoder", default="nemotron_h_moe", choices=["nemotron_h_moe", "llama"],
                        help="the tiny llama.cpp test model's decoder: hybrid like the target (default) "
                             "or attention-only")
    parser.add_argument("--threads", type=int, default=threads)


def test_model_args(tmp: Path, model: str = "", mmproj: str = "", backend: str = "auto",
                    decoder: str = "nemotron_h_moe") -> dict[str, str]:
    """The named model, or the tiny random-weight test model written into tmp for the chosen backend (on
    llama.cpp with the chosen decoder)."""
    if model:
        return {"model": model, "mmproj": mmproj, "backend": backend}
    if backend == "mlx":
        from omnid.models.mlx_test_model import write_mlx_test_model
        return {"model": str(write_mlx_test_model(tmp / "mlx-model")), "mmproj": "", "backend": "mlx"}
    from omnid.models.gguf_test_model import write_test_model
    paths = write_test_model(tmp / "model", decoder=decoder)
    return {"model": str(paths.text), "mmproj": str(paths.mmproj or ""), "backend": "llama.cpp"}


class StolenTime:
    """How much CPU time the hypervisor gave to other machines while a benchmark ran (Linux /proc/stat "steal").

    On a shared VM a busy neighbour slows everything at once: on this project's 2-core machine a 16k-token
    prompt-cache hit took 10.2 ms in a run at 0.4% steal and 15.3 ms in the next at 15.7%. Printing it tells a
    reader which runs to trust.
    """

    def __init__(self) -> None:
        self._start = _cpu_times()

    def percent(self) -> float | None:
        end = _cpu_times()
        if self._start is None or end is None:
            return None
        delta = [b - a for a, b in zip(self._start, end)]
        return 100 * delta[7] / max(sum(delta[:8]), 1)

    def describe(self) -> str:
        """The line every benchmark prints first."""
        share = self.percent()
        taken = "an unknown share (no /proc/stat)" if share is None else f"{share:.1f}%"
        return f"host: other machines took {taken} of CPU time during this run (timings are inflated when it is high)"


def _cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields if len(fields) >= 8 else None
    except (OSError, ValueError):
        return None


@dataclass
class DaemonProcess:
    process: subprocess.Popen
    socket: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_daemon(tmp: Path, model_args: dict[str, str], extra: list[str], timeout: float = 120) -> DaemonProcess:
    """`omnid serve` on a socket in tmp; returns once it answers."""
    socket = tmp / "run" / "omnid.sock"
    cmd = [sys.executable, "-m", "omnid.daemon", "serve", "--model", model_args["model"],
           "--backend", model_args["backend"], "--socket", str(socket), "--data-dir", str(tmp / "data"),
           "--exit-with-parent", *extra]
    if model_args["mmproj"]:
        cmd += ["--mmproj", model_args["mmproj"]]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "MLX_DISABLE_COMPILE": "1"}
    process = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}")
        if socket.exists():
            channel = grpc.insecure_channel(f"unix:{socket}")
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return DaemonProcess(process, socket)
            except grpc.FutureTimeoutError:
                pass
            finally:
                channel.close()
        time.sleep(0.1)
    process.kill()
    raise TimeoutError("the daemon did not start in time")


@dataclass(frozen=True)
class Shapes:
    """What a decoder's sequence state is made of."""

    mamba_layers: int = 0
    conv: int = 0
    d_inner: int = 0
    groups: int = 0
    d_state: int = 0
    attention_layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0

    def recurrent_bytes(self) -> int:
        """Per Mamba2 layer: the last conv-1 inputs of x, B and C, and the SSM state, in f32."""
        conv = (self.conv - 1) * (self.d_inner + 2 * self.groups * self.d_state) if self.mamba_layers else 0
        return self.mamba_layers * (conv + self.d_state * self.d_inner) * 4

    def kv_bytes_per_token(self) -> int:
        return self.attention_layers * self.kv_heads * self.head_dim * 2 * 2  # K and V, f16


#: NVIDIA Nemotron 3 Nano (the Omni model's decoder), as published: hybrid pattern
#: "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME" (23 Mamba2, 23 MoE, 6 attention layers), hidden 2688,
#: Mamba2 64 heads x 64 wide (inner 4096), state 128, 8 groups, conv kernel 4; attention 2 KV heads x 128.
NEMOTRON_3_NANO = Shapes(mamba_layers=23, conv=4, d_inner=4096, groups=8, d_state=128, attention_layers=6,
                         kv_heads=2, head_dim=128)
#: Its vocabulary (a snapshot also holds the last logits, one float each).
NEMOTRON_3_NANO_VOCAB = 131_072
