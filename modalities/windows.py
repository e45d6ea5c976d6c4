"""Which windows are on screen, and which of them the model must never see.

Privacy is enforced here, on the frame itself, before it goes anywhere: every mapped window (focused or
not) is checked against the exclusion rules, and an excluded window's rectangle is painted black in the
frame. When excluded windows cover most of the frame, the frame is dropped instead: a mostly-black picture
says nothing and the remaining slivers are not worth the risk.

Rules are case-insensitive substrings of a window's WM_CLASS (instance or class) or title, plus, on by
default, private/incognito browser windows recognised by the marks browsers put in their titles and
classes: Firefox "Private Browsing", Chrome/Chromium "Incognito", Edge "InPrivate", Brave/Vivaldi
"(Private)", Safari-style "Private Browsing", and Tor Browser as a whole. Password managers are excluded by
default too. A window's rectangle is blacked out whole, even where another window covers part of it: the
stacking order is not trusted to hide anything.

Platforms: X11 through python-xlib (one connection, a handful of round trips per window; listed only for
frames that changed). Without python-xlib or an X connection, `WindowLister` raises ScreenUnavailable: a
watcher that cannot see windows cannot honour exclusions, so it does not start. macOS (Quartz
CGWindowListCopyWindowInfo) is NOT implemented: it could not be built or tested on this project's machines,
so on macOS the screen pipeline refuses to run rather than pretend to exclude.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from omnid.modalities.screen_capture import Frame, Rect, ScreenUnavailable

#: Marks of private/incognito browser windows in titles and WM_CLASS (regular expressions, case-insensitive).
PRIVATE_PATTERNS = (
    r"private browsing",          # Firefox ("... — Mozilla Firefox Private Browsing"), Safari, Librewolf
    r"\bincognito\b",             # Chrome, Chromium ("... - Chromium (Incognito)")
    r"\binprivate\b",             # Microsoft Edge ("[InPrivate]")
    r"\(private\)",               # Brave, Vivaldi ("... - Brave (Private)")
    r"private window",            # Brave/Opera "New Private Window"
    r"tor ?browser",              # Tor Browser: private by design
    r"firefox[-_ ]private",       # Firefox's private-window WM_CLASS on some builds
)
_PRIVATE_RE = re.compile("|".join(PRIVATE_PATTERNS), re.IGNORECASE)

#: Applications excluded unless the user removes them: password managers.
DEFAULT_EXCLUDED_APPS = ("keepassxc", "keepass2", "1password", "bitwarden", "enpass", "seahorse")

#: Frames whose area is excluded at least this much are dropped rather than blacked out.
DROP_COVERAGE = 0.6


@dataclass(frozen=True)
class WindowInfo:
    """A mapped top-level window as X11 describes it."""

    window_id: int
    wm_instance: str
    wm_class: str
    title: str
    rect: Rect
    states: frozenset[str] = frozenset()
    focused: bool = False

    @property
    def app(self) -> str:
        return self.wm_class or self.wm_instance


@dataclass
class ExclusionRules:
    """What never reaches the model."""

    names: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDED_APPS))
    private_browsing: bool = True

    def with_names(self, extra: Iterable[str]) -> "ExclusionRules":
        more = [n.strip().lower() for n in extra if n.strip()]
        return ExclusionRules(self.names + [n for n in more if n not in self.names], self.private_browsing)

    def describe(self) -> list[str]:
        out = [f"app/window: {n}" for n in self.names]
        if self.private_browsing:
            out.append("private/incognito browser windows")
        return out

    def reason(self, win: WindowInfo) -> str | None:
        """Why this window is excluded, or None."""
        fields = (win.wm_instance.lower(), win.wm_class.lower(), win.title.lower())
        for name in self.names:
            if any(name.lower() in f for f in fields):
                return f"matches {name!r}"
        if self.private_browsing and any(_PRIVATE_RE.search(f) for f in fields):
            return "private browsing window"
        return None


@dataclass
class Exclusion:
    """The outcome of applying the rules to one frame."""

    excluded: list[WindowInfo]
    coverage: float                 # fraction of the frame under excluded windows
    focused: WindowInfo | None      # the focused window (None when unknown or itself excluded)

    @property
    def drop(self) -> bool:
        return self.coverage >= DROP_COVERAGE


def apply_exclusions(frame: Frame, windows: list[WindowInfo], rules: ExclusionRules,
                     fp_mask_shape: tuple[int, int] | None = None, step: int = 1
                     ) -> tuple[Exclusion, np.ndarray | None]:
    """Black out excluded windows in `frame` (in place) and measure how much of it they cover.

    Also returns a boolean mask at fingerprint resolution (shape fp_mask_shape, samples every `step` pixels
    from step // 2) marking excluded samples, so change detection ignores what the model will never see.
    """
    h, w = frame.pixels.shape[:2]
    covered = np.zeros((h, w), dtype=bool) if windows else None
    excluded: list[WindowInfo] = []
    focused: WindowInfo | None = None
    for win in windows:
        if rules.reason(win) is None:
            if win.focused:
                focused = win
            continue
        excluded.append(win)
        inside = frame.area.intersect(win.rect)
        if inside is None:
            continue
        frame.black_out(inside)
        x, y = inside.left - frame.area.left, inside.top - frame.area.top
        assert covered is not None  # made above whenever there are windows
        covered[y:y + inside.height, x:x + inside.width] = True
    coverage = float(covered.mean()) if excluded and covered is not None else 0.0
    mask = None
    if fp_mask_shape is not None and excluded and covered is not None:
        off = step // 2
        mask = covered[off::step, off::step][:fp_mask_shape[0], :fp_mask_shape[1]]
    return Exclusion(excluded, coverage, focused), mask


class WindowLister:
    """Lists mapped top-level windows over one X11 connection (python-xlib). Use from one thread."""

    def __init__(self) -> None:
        try:
            from Xlib import X, display, error  # noqa: F401  (imported here: optional outside Linux)
        except ImportError:
            raise ScreenUnavailable("python-xlib is not installed, so excluded windows cannot be found; "
                                    "install python-xlib (pip install python-xlib)") from None
        try:
            self._d = display.Display()
        except Exception as exc:
            raise ScreenUnavailable(f"cannot list windows (X11): {exc}; exclusions could not be enforced") from None
        self._X = X
        self._errors = (error.XError, error.BadWindow, error.BadDrawable, error.BadMatch)
        self._root = self._d.screen().root
        atom = self._d.intern_atom
        self._net_client_list = atom("_NET_CLIENT_LIST_STACKING")
        self._net_active = atom("_NET_ACTIVE_WINDOW")
        self._net_wm_name = atom("_NET_WM_NAME")
        self._net_wm_state = atom("_NET_WM_STATE")
        self._utf8 = atom("UTF8_STRING")
        self._atom_names: dict[int, str] = {}

    def close(self) -> None:
        if self._d is not None:
            d, self._d = self._d, None
            d.close()

    def windows(self) -> list[WindowInfo]:
        """Every viewable top-level window, bottom to top, with the focused one marked."""
        focus = self._focused_id()
        out: list[WindowInfo] = []
        for win in self._top_levels():
            try:
                info = self._describe(win, focus)
            except self._errors:  # the window went away while we looked at it: it is not on screen
                continue
            if info is not None:
                out.append(info)
        return out

    # -- X11 details -----------------------------------------------------------------------------------------

    def _top_levels(self) -> list:
        """Client windows from the window manager (EWMH) when there is one, else the root's children."""
        prop = self._root.get_full_property(self._net_client_list, self._X.AnyPropertyType)
        if prop is not None and len(prop.value):
            return [self._d.create_resource_object("window", wid) for wid in prop.value]
        return list(self._root.query_tree().children)

    def _focused_id(self) -> int:
        try:
            prop = self._root.get_full_property(self._net_active, self._X.AnyPropertyType)
            if prop is not None and len(prop.value) and prop.value[0]:
                return int(prop.value[0])
            focus = self._d.get_input_focus().focus
            if isinstance(focus, int):  # PointerRoot / None
                return 0
            # Walk up to the top-level window (a child of the root) that holds the focus.
            while True:
                tree = focus.query_tree()
                if tree.parent == 0 or tree.parent.id == self._root.id:
                    return int(focus.id)
                focus = tree.parent
        except self._errors:
            return 0

    def _describe(self, win, focus: int) -> WindowInfo | None:
        attrs = win.get_attributes()
        if attrs.map_state != self._X.IsViewable or attrs.win_class == self._X.InputOnly:
            return None
        geom = win.get_geometry()
        origin = self._root.translate_coords(win, 0, 0)
        rect = Rect(origin.x - geom.border_width, origin.y - geom.border_width,
                    geom.width + 2 * geom.border_width, geom.height + 2 * geom.border_width)
        wm_class = win.get_wm_class() or ("", "")
        title = self._title(win)
        if not wm_class[0] and not wm_class[1] and not title:
            # A reparenting window manager without EWMH: the client sits one level down in its frame.
            for child in win.query_tree().children:
                wm_class = child.get_wm_class() or ("", "")
                title = self._title(child)
                if wm_class[0] or wm_class[1] or title:
                    break
        return WindowInfo(window_id=int(win.id), wm_instance=wm_class[0] or "", wm_class=wm_class[1] or "",
                          title=title, rect=rect, states=self._states(win), focused=int(win.id) == focus)

    def _title(self, win) -> str:
        prop = win.get_full_property(self._net_wm_name, self._utf8)
        if prop is not None and prop.value:
            value = prop.value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        name = win.get_wm_name()
        if isinstance(name, bytes):
            return name.decode("latin-1", "replace")
        return name or ""

    def _states(self, win) -> frozenset[str]:
        prop = win.get_full_property(self._net_wm_state, self._X.AnyPropertyType)
        if prop is None:
            return frozenset()
        names = []
        for atom in prop.value:
            if atom not in self._atom_names:
                self._atom_names[atom] = self._d.get_atom_name(atom)
            names.append(self._atom_names[atom].removeprefix("_NET_WM_STATE_").lower())
        return frozenset(names)
