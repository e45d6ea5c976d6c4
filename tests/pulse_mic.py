"""A user-mode PulseAudio with a virtual microphone, for tests of live capture on a headless machine.

Per ../shared/notes/headless-ci.md: a null sink `vspeaker`, a source `vmic` remapped from its monitor (what is
played into vspeaker is heard on vmic), and a silent loopback that keeps the graph running (without it capture
stalls). `PulseMic.play(wav)` plays a file into the microphone with paplay. The server lives in a temp dir and
is stopped with `pactl exit`; PULSE_SERVER points sounddevice's `pulse` device at it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class PulseUnavailable(RuntimeError):
    """pulseaudio / pactl / paplay are not installed, or the server would not start: tests skip with this reason."""


class PulseMic:
    def __init__(self) -> None:
        for tool in ("pulseaudio", "pactl", "paplay"):
            if shutil.which(tool) is None:
                raise PulseUnavailable(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils)")
        self.dir = Path(tempfile.mkdtemp(prefix="omnid-pulse-"))
        self.socket = self.dir / "native"
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{self.socket}", "PULSE_RUNTIME_PATH": str(self.dir),
                    "HOME": str(self.dir), "XDG_RUNTIME_DIR": str(self.dir)}
        script = self.dir / "default.pa"
        script.write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            "load-module module-null-sink sink_name=vspeaker\n"
            "load-module module-remap-source source_name=vmic master=vspeaker.monitor\n"
            "load-module module-null-source source_name=silence\n"
            "load-module module-loopback source=silence sink=vspeaker\n"
            "set-default-sink vspeaker\nset-default-source vmic\n")
        result = subprocess.run(
            ["pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit=no",
             f"--file={script}", "--use-pid-file=no", "--log-target=stderr"],
            env=self.env, capture_output=True, text=True, timeout=30)
        if result.returncode != 0 or not self._wait_ready():
            raise PulseUnavailable(f"pulseaudio did not start: {result.stderr.strip()[-500:]}")
        time.sleep(2.0)  # the notes: capture right after start loses 1-2 s

    def _wait_ready(self) -> bool:
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def activate(self) -> dict[str, str]:
        """Point this process's PortAudio at the server (before sounddevice is first imported or re-initialised)."""
        old = {k: os.environ.get(k, "") for k in ("PULSE_SERVER", "PULSE_RUNTIME_PATH")}
        os.environ["PULSE_SERVER"] = self.env["PULSE_SERVER"]
        os.environ["PULSE_RUNTIME_PATH"] = self.env["PULSE_RUNTIME_PATH"]
        return old

    def play(self, wav: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "--device=vspeaker", str(wav)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self) -> None:
        subprocess.run(["pactl", "exit"], env=self.env, capture_output=True, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
