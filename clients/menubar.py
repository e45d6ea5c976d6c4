"""`omnid-menubar` (and `omni menubar`): the tray icon and its menu, a thin layer over pystray.

    omnid-menubar                       # the default socket; --socket / --tcp / --token-file like `omni`

What the icon and menu show is decided in clients/menubar_state.py and done in clients/menubar_actions.py;
this module only turns them into widgets. pystray picks the platform's tray: the macOS menu bar, the Windows
notification area, AppIndicator / StatusNotifier or GTK on Linux desktops that have them (PyGObject), else the
plain X tray (XEmbed, `PYSTRAY_BACKEND=xorg`). pystray's X backend has no menus, so there a click on the icon
pops up the same menu as a Tk menu at the pointer.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import queue
import sys
import threading
from typing import Any

from omnid.clients import menubar_icons as icons
from omnid.clients import menubar_state as st
from omnid.clients.menubar_actions import (Controller, Settings, add_menubar_flags, default_serve_args_path,
                                           desktop_notify, read_serve_args)

log = logging.getLogger("omnid.menubar")
#: Windows cuts a tray tooltip at 128 characters.
MAX_TITLE = 127
#: The Tk menu opens this far below the pointer, so it does not cover the icon (Tk keeps it on the screen).
MENU_BELOW = 14


def _load_pystray() -> Any:
    """pystray, or a one-line reason why there is no tray here (its X backend connects to the display on import)."""
    try:
        import pystray
    except Exception as exc:  # Xlib's DisplayNameError / DisplayConnectionError, a missing backend
        where = os.environ.get("DISPLAY")
        reason = f"cannot open the display {where}: {exc}" if where else "no display (DISPLAY is not set)"
        raise SystemExit(f"omnid-menubar: no tray to show an icon in: {reason}")
    return pystray


class TrayApp:
    def __init__(self, settings: Settings) -> None:
        self.pystray = _load_pystray()
        self.controller = Controller(settings, self._changed, self._notify)
        self._update_lock = threading.Lock()
        view = self.controller.view
        self.tk_menu = not self.pystray.Icon.HAS_MENU
        self.icon = self.pystray.Icon("omnid", icons.draw(st.icon_look(view)), self._title(view),
                                      menu=self._pystray_menu())
        if self.tk_menu:
            _listen_for_clicks(self.icon)
        self._popups: queue.Queue[None] = queue.Queue()
        self._open_menu: Any = None

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> int:
        def setup(icon: Any) -> None:
            icon.visible = True
            self.controller.start()
        if not self.tk_menu:
            self.icon.run(setup=setup)  # the platform's own loop, in the main thread (macOS needs it there)
            return 0
        import tkinter as tk
        self.root = tk.Tk(className="omnid-menubar")
        self.root.withdraw()
        # Not run_detached: on X, pystray 0.19 starts a second setup thread there, and whichever of the two
        # gets the "ready" signal runs (ours may never). Its X loop runs happily in a thread of ours.
        threading.Thread(target=self.icon.run, kwargs={"setup": setup}, name="omnid-menubar-x", daemon=True).start()
        self.root.after(30, self._poll_popups)
        try:
            self.root.mainloop()
        except KeyboardInterrupt:
            self._quit()
        return 0

    def _quit(self) -> None:
        self.controller.close()
        self.icon.stop()
        if self.tk_menu:
            self.root.after(0, self.root.quit)

    # -- what the icon shows -------------------------------------------------------------------------------

    def _title(self, view: st.DaemonView) -> str:
        title = st.tooltip(view)[:MAX_TITLE]
        # The X tray's title is the window's name, which python-xlib sends as Latin-1.
        return title.replace("…", "...").encode("latin-1", "replace").decode("latin-1") if self.tk_menu else title

    def _changed(self, view: st.DaemonView) -> None:
        with self._update_lock:  # the poller and the actions' threads both publish
            self.icon.icon = icons.draw(st.icon_look(view))
            self.icon.title = self._title(view)
            if not self.tk_menu:
                self.icon.update_menu()

    def _notify(self, title: str, body: str) -> None:
        log.info("notification: %s: %s", title, body.replace("\n", " ")[:200])
        if self.icon.HAS_NOTIFICATION:
            self.icon.notify(body, title)
        else:
            desktop_notify(title, body)

    def _clicked(self, entry: st.Entry) -> None:
        if entry.action == st.QUIT:
            self._quit()
        else:
            self.controller.run(entry.action, entry.arg)

    # -- pystray's own menus (every backend but X) ---------------------------------------------------------

    def _pystray_menu(self) -> Any:
        pystray = self.pystray

        def item(entry: st.Entry) -> Any:
            if entry.children:
                return pystray.MenuItem(entry.label, pystray.Menu(*(item(c) for c in entry.children)))
            return pystray.MenuItem(entry.label, lambda *_: self._clicked(entry), enabled=entry.enabled and
                                    not entry.is_info)
        # The default item (a left click on X, where there is no menu) pops up the Tk menu instead.
        return pystray.Menu(lambda: (pystray.MenuItem("omnid", self._popup, default=True, visible=False),
                                     *(item(e) for e in st.menu(self.controller.view))))

    # -- the Tk menu (the X tray) --------------------------------------------------------------------------

    def _popup(self, *_: Any) -> None:
        """A click on the icon (pystray's X thread): ask the Tk thread to open the menu at the pointer."""
        if self.tk_menu:
            self._popups.put(None)  # Tk is not thread-safe: its own thread reads the pointer and opens the menu

    def _poll_popups(self) -> None:
        while not self._popups.empty():
            self._popups.get()
            x, y = self.root.winfo_pointerxy()
            if self._open_menu is not None:
                self._open_menu.destroy()
            entries = st.menu(self.controller.view)
            log.info("menu: %s", " | ".join(e.label for e in entries))
            self._open_menu = self._tk_menu(entries)
            self._open_menu.tk_popup(x, y + MENU_BELOW)
        self.root.after(30, self._poll_popups)

    def _tk_menu(self, entries: st.Menu, parent: Any = None) -> Any:
        import tkinter as tk
        menu = tk.Menu(parent or self.root, tearoff=0)
        for entry in entries:
            if entry.children:
                log.info("submenu %s: %s", entry.label, " | ".join(c.label for c in entry.children))
                menu.add_cascade(label=entry.label, menu=self._tk_menu(entry.children, menu))
            else:
                menu.add_command(label=entry.label, command=functools.partial(self._clicked, entry),
                                 state="normal" if entry.enabled and not entry.is_info else "disabled")
        return menu


def _listen_for_clicks(icon: Any) -> None:
    """pystray 0.19's X backend never asks for button events, so a click on its icon does nothing (pystray
    issue #151); select them on its window (any button opens the menu: the X tray has no convention)."""
    import Xlib.X
    window = icon._window
    window.change_attributes(event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask)
    icon._display.flush()
    icon._on_button_press = lambda event: icon()


def build_parser(prog: str = "omnid-menubar") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The omnid tray icon: the daemon at a glance, and a "
                                     "menu to ask, record meetings, watch the screen and add documents.")
    add_menubar_flags(parser)
    parser.add_argument("--socket", default=None, help="the daemon's Unix socket (default: OMNID_SOCKET or the "
                        "runtime dir)")
    parser.add_argument("--tcp", default=None, metavar="HOST:PORT", help="a loopback HOST:PORT instead of the socket")
    parser.add_argument("--token-file", default=None, help="the token for --tcp (default: OMNID_TOKEN, else "
                        "~/.config/omnid/token)")
    return parser


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="omnid-menubar: %(message)s", stream=sys.stderr)
    settings = Settings(socket=args.socket, tcp=args.tcp, token_file=args.token_file, poll_seconds=args.poll,
                        summary=not args.no_summary,
                        serve_args=read_serve_args(args.serve_args or default_serve_args_path()))
    return TrayApp(settings).run()


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
