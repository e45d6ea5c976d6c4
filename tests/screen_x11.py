"""A real X screen for the screen tests: Xvfb plus Tk windows that change on command.

Xvfb is started with -displayfd so the server picks a free display number itself (parallel test runs do
not collide). Each window is a small Tk program in its own process, driven over stdin, so the test process
never holds Tk state and a window can be changed, retitled, focused or closed at any time.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from typing import Iterator

_TK_PROGRAM = r"""
import sys, threading, tkinter as tk
title, geometry, color = sys.argv[1], sys.argv[2], sys.argv[3]
root = tk.Tk(className=sys.argv[4] if len(sys.argv) > 4 else "Tk")
root.title(title); root.geometry(geometry); root.configure(bg=color)
label = tk.Label(root, text=title, font=("Helvetica", 24), bg=color)
label.pack(expand=True, fill="both")
commands = []
def reader():
    for line in sys.stdin:
        commands.append(line.rstrip("\n"))
    commands.append("quit")
def poll():
    while commands:
        cmd, _, arg = commands.pop(0).partition(" ")
        if cmd == "color":
            root.configure(bg=arg); label.configure(bg=arg)
        elif cmd == "title":
            root.title(arg)
        elif cmd == "text":
            label.configure(text=arg)
        elif cmd == "geometry":
            root.geometry(arg)
        elif cmd == "quit":
            root.destroy(); return
        root.update_idletasks(); root.update()
        print("ok " + cmd, flush=True)
    root.after(20, poll)
threading.Thread(target=reader, daemon=True).start()
root.update()
print("ready %d" % int(root.wm_frame(), 16), flush=True)
root.after(20, poll)
root.mainloop()
"""


def xvfb_missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if not shutil.which("Xvfb"):
        return "Xvfb is not installed (apt-get install xvfb): the screen tests need a real X server"
    return None


class Xvfb:
    """An Xvfb server on a display number of its own choosing."""

    def __init__(self, width: int = 1280, height: int = 720) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp",
             "-noreset"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            self.proc.kill()
            raise RuntimeError("Xvfb did not report a display number")
        self.display = f":{number}"
        self.size = (width, height)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DISPLAY"] = self.display
        env.pop("WAYLAND_DISPLAY", None)
        return env

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TkWindow:
    """A Tk window in its own process on the given display."""

    def __init__(self, display: str, title: str, geometry: str, color: str, wm_class: str = "Tk") -> None:
        env = dict(os.environ, DISPLAY=display)
        self.proc = subprocess.Popen([sys.executable, "-c", _TK_PROGRAM, title, geometry, color, wm_class],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the Tk window did not start: {line!r}")
        self.display = display
        self.window_id = int(line.split()[1])
        time.sleep(0.15)  # let the X server finish mapping and drawing

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()
        time.sleep(0.05)

    def color(self, color: str) -> None:
        self._send(f"color {color}")

    def title(self, title: str) -> None:
        self._send(f"title {title}")

    def text(self, text: str) -> None:
        self._send(f"text {text}")

    def geometry(self, geometry: str) -> None:
        self._send(f"geometry {geometry}")

    def focus(self) -> None:
        """Give this window the input focus (there is no window manager: windowfocus, not windowactivate)."""
        subprocess.run(["xdotool", "windowfocus", "--sync", str(self.window_id)], capture_output=True,
                       env=dict(os.environ, DISPLAY=self.display), timeout=5, check=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """os.environ with `values` set (None: removed) for the block, as it was after it: for starting a daemon
    that inherits a display or a sound server from a module-scoped fixture (where monkeypatch cannot go)."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
