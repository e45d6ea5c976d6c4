"""An X tray host (Debian's trayer) on an Xvfb screen, and the menubar driven as a person would: xdotool clicks.

Used by tests/test_menubar_x11.py and scripts/screenshot_menubar.py. The icon is found with `xdotool search`
(pystray names its window's instance `omnidSystemTrayIcon`; its name is the tooltip); a Tk menu is a visible
window of class `Menu`, its entries all one height (the menubar uses no separators), in the order the menubar
logs when it opens it ("menu: A | B | ..."), so an entry is clicked by its label.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image


def tray_missing() -> str | None:
    for tool in ("Xvfb", "trayer", "xdotool", "xwininfo", "xprop"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs xvfb, trayer, xdotool and x11-utils)"
    return None


@dataclass(frozen=True)
class Window:
    id: str
    name: str
    res_name: str
    res_class: str
    width: int
    height: int
    x: int
    y: int

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.width // 2, self.y + self.height // 2


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class XTray:
    """trayer on a display, and what the tests look for there."""

    def __init__(self, display: str, width: int = 240) -> None:
        self.display = display
        self.env = {"DISPLAY": display}
        self.proc = subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", str(width),
             "--height", "24", "--transparent", "false", "--tint", "0xdddddd"],
            env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("trayer's panel", self.panel, 20)

    def _env(self) -> dict[str, str]:
        import os
        return {**os.environ, **self.env}

    def x(self, *command: str) -> str:
        return subprocess.run(command, env=self._env(), capture_output=True, text=True, timeout=20).stdout

    def window(self, window_id: str) -> Window | None:
        """A window's name, WM_CLASS and place on the screen (None once it is gone)."""
        info = self.x("xwininfo", "-id", window_id)
        if "Absolute upper-left X" not in info:
            return None
        field = dict(line.strip().split(": ", 1) for line in info.splitlines() if ": " in line)
        wm_class = re.findall(r'"([^"]*)"', self.x("xprop", "-id", window_id, "WM_CLASS"))
        res_name, res_class = (wm_class + ["", ""])[:2]
        return Window(window_id, self.title_of(window_id), res_name, res_class, int(field["Width"]),
                      int(field["Height"]), int(field["Absolute upper-left X"]), int(field["Absolute upper-left Y"]))

    def search(self, *criteria: str) -> list[Window]:
        ids = self.x("xdotool", "search", *criteria).split()
        return [w for w in (self.window(hex(int(i))) for i in ids) if w is not None]

    def screen_height(self) -> int:
        return int(re.search(r"Height: (\d+)", self.x("xwininfo", "-root")).group(1))

    def panel(self) -> Window | None:
        return next(iter(self.search("--classname", "^panel$")), None)

    def icon(self) -> Window | None:
        """The menubar's icon window (pystray names its instance `omnidSystemTrayIcon`)."""
        return next(iter(self.search("--classname", "^omnidSystemTrayIcon$")), None)

    def title_of(self, window_id: str) -> str:
        out = self.x("xprop", "-id", window_id, "WM_NAME")
        value = out.partition("=")[2].strip()
        return value[1:-1].encode().decode("unicode_escape") if value.startswith('"') else value

    def title(self) -> str:
        """The icon window's full name: the menubar's tooltip (xwininfo shows only its first line)."""
        icon = self.icon()
        return "" if icon is None else icon.name

    def ancestors(self, window_id: str) -> list[str]:
        """The ids of a window's parents up to the root."""
        chain = []
        while True:
            out = self.x("xwininfo", "-tree", "-id", window_id)
            m = re.search(r"Parent window id: (0x[0-9a-f]+)", out)
            if not m or "(the root window)" in out.split("Parent window id:")[1].splitlines()[0]:
                return chain
            window_id = m.group(1)
            chain.append(window_id)

    def embedded(self) -> bool:
        """The icon sits inside trayer's panel (XEmbed docked it), not on the root window."""
        icon, panel = self.icon(), self.panel()
        return icon is not None and panel is not None and panel.id in self.ancestors(icon.id)

    def visible_menus(self) -> list[Window]:
        return self.search("--onlyvisible", "--class", "^Menu$")

    def grab(self, window: Window) -> Image.Image:
        """The window's pixels, taken from the screen."""
        return self.grab_region(window.x, window.y, window.width, window.height)

    def grab_region(self, left: int, top: int, width: int, height: int) -> Image.Image:
        import mss
        with mss.MSS(display=self.display) as screen:
            shot = screen.grab({"left": left, "top": top, "width": width, "height": height})
        return Image.frombytes("RGB", shot.size, shot.bgra, "raw", "BGRX")

    def click(self, x: int, y: int, button: int = 1) -> None:
        self.x("xdotool", "mousemove", "--sync", str(x), str(y), "click", str(button))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Menubar:
    """`python -m omnid.clients.menubar` on the display, its log in a file."""

    def __init__(self, tray: XTray, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.tray = tray
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "omnid.clients.menubar", "--poll", "0.5", *args],
                                     env={**tray._env(), **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def _menu_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if line.startswith(("omnid-menubar: menu: ",
                                                                              "omnid-menubar: submenu "))]

    def menus_opened(self) -> int:
        return sum(1 for line in self._menu_lines() if line.startswith("omnid-menubar: menu: "))

    def _labels(self, opened: int) -> tuple[list[str], dict[str, list[str]]]:
        """The labels of the `opened`-th menu (0-based) and of its submenus, from the menubar's log."""
        lines = self._menu_lines()
        roots = [i for i, line in enumerate(lines) if line.startswith("omnid-menubar: menu: ")]
        first = roots[opened]
        last = roots[opened + 1] if opened + 1 < len(roots) else len(lines)
        labels = lines[first].removeprefix("omnid-menubar: menu: ").split(" | ")
        subs = {}
        for line in lines[first + 1:last]:
            name, _, items = line.removeprefix("omnid-menubar: submenu ").partition(": ")
            subs[name] = items.split(" | ")
        return labels, subs

    def open_menu(self) -> tuple[Window, list[str], dict[str, list[str]]]:
        """Click the icon; the menu window that opens, its labels and its submenus' labels."""
        before = self.menus_opened()
        wait_for("the icon docked in the tray", self.tray.embedded, 30)
        icon = self.tray.icon()
        assert icon is not None
        self.tray.click(*icon.center)
        menu = wait_for("the menu to open", lambda: self.tray.visible_menus(), 20)
        assert isinstance(menu, list)
        wait_for("the menu's log line", lambda: self.menus_opened() > before, 10)
        labels, subs = self._labels(before)
        return menu[0], labels, subs

    @staticmethod
    def entry_point(menu: Window, labels: list[str], label: str) -> tuple[int, int]:
        """Where an entry is (the first whose label starts with `label`)."""
        index = next(i for i, text in enumerate(labels) if text.startswith(label))
        step = menu.height / len(labels)
        return menu.x + menu.width // 2, int(menu.y + step * index + step / 2)

    def choose(self, label: str, then: str | None = None) -> list[str]:
        """Open the menu and click an entry (`then`: an entry of the submenu that `label` opens); returns the
        labels the menu had."""
        menu, labels, subs = self.open_menu()
        x, y = self.entry_point(menu, labels, label)
        if then is None:
            self.tray.click(x, y)
            return labels
        self.tray.x("xdotool", "mousemove", "--sync", str(x), str(y))  # hovering a cascade opens its submenu
        sub = wait_for("the submenu", lambda: [m for m in self.tray.visible_menus() if m.id != menu.id], 10)
        assert isinstance(sub, list)
        cascade = next(name for name in subs if name.startswith(label))
        self.tray.click(*self.entry_point(sub[0], subs[cascade], then))
        return labels

    def close_menu(self) -> None:
        """Click away from the open menu, as a person does (it closes)."""
        self.tray.click(5, self.tray.screen_height() - 5)
        wait_for("the menu to close", lambda: not self.tray.visible_menus(), 10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
