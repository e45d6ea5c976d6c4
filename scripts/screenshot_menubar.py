"""A screenshot of the menubar with its menu open, for the README: `bash scripts/screenshots` (or run this with
the venv's Python, optionally naming the PNG to write; default docs/menubar.png).

Everything is real and local: an Xvfb screen, Debian's trayer as the X tray, the daemon on the tiny test model
(written into a temp folder) with its screen watcher on, and the menubar, whose icon is clicked with xdotool
as in tests/test_menubar_x11.py. The picture is the top-right corner of the screen: the tray and the menu.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from _common import start_daemon, test_model_args  # noqa: E402
from screen_x11 import TkWindow, Xvfb  # noqa: E402
from tray_x11 import Menubar, XTray, tray_missing, wait_for  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402

WIDTH, HEIGHT = 900, 420


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "docs" / "menubar.png"
    if tray_missing():
        print(f"screenshot_menubar: {tray_missing()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="omnid-screenshot-") as folder:
        tmp = Path(folder)
        screen = Xvfb(WIDTH, HEIGHT)
        desktop = TkWindow(screen.display, " ", f"{WIDTH}x{HEIGHT - 24}+0+24", "#4c566a")
        tray = XTray(screen.display)
        import os
        os.environ["DISPLAY"] = screen.display  # the daemon watches this screen
        daemon = start_daemon(tmp, test_model_args(tmp), ["--threads", "1", "--ctx", "4096", "--cache-disk", "off"])
        bar = Menubar(tray, tmp / "menubar.log", "--socket", str(daemon.socket))
        try:
            with OmniClient(f"unix:{daemon.socket}") as client:
                client.start_screen_watch(interval=5.0)
            wait_for("the menubar to see the watcher", lambda: "Screen watcher on" in tray.title(), 60)
            menu, _, _ = bar.open_menu()
            left, bottom = max(0, menu.x - 40), min(HEIGHT, menu.y + menu.height + 30)
            image = tray.grab_region(left, 0, WIDTH - left, bottom)
            colours = len(set(image.getcolors(maxcolors=1 << 16) or []))
            if colours < 8:
                print(f"screenshot_menubar: the picture is nearly blank ({colours} colours)", file=sys.stderr)
                return 1
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out, optimize=True)
            print(f"wrote {out} ({image.width}x{image.height}, {colours} colours)")
        finally:
            bar.stop()
            daemon.stop()
            tray.close()
            desktop.close()
            screen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
