"""Grabbing the screen with mss, cheaply, as raw BGRX pixels the rest of the screen pipeline works on.

Why raw pixels: a watcher grabs every second, and most grabs are thrown away as unchanged. mss hands back a
BGRX bytearray in ~5 ms for 1920x1080 (XShm); converting to PIL costs ~3-8 ms more and mss's own `.rgb` ~40-57
ms. So a `Frame` keeps the bytearray as a writable numpy view (excluded windows are blacked out in place),
and only a frame that goes to the model is converted, once, with PIL's BGRX decoder (`to_image`).

Monitors follow mss numbering: 0 = all monitors together, 1.. = one monitor. A region is a monitor-relative
rectangle inside it.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import mss
import numpy as np
from PIL import Image

from omnid.models.base import InputError


class ScreenUnavailable(InputError):
    """No screen to grab (no DISPLAY, no X server, an unknown monitor): FAILED_PRECONDITION for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unsupported=True)


@dataclass(frozen=True)
class Rect:
    """A rectangle in root-window (virtual screen) coordinates."""

    left: int
    top: int
    width: int
    height: int

    def intersect(self, other: "Rect") -> "Rect | None":
        x0, y0 = max(self.left, other.left), max(self.top, other.top)
        x1 = min(self.left + self.width, other.left + other.width)
        y1 = min(self.top + self.height, other.top + other.height)
        return Rect(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


@dataclass
class Frame:
    """One grab: BGRX pixels (H x W x 4 uint8, writable, sharing mss's buffer) and where they came from."""

    pixels: np.ndarray
    area: Rect
    monitor: int
    time_unix: float

    def to_image(self) -> Image.Image:
        """RGB PIL image of the frame (the only full-size conversion a frame ever gets)."""
        h, w, _ = self.pixels.shape
        return Image.frombuffer("RGB", (w, h), np.ascontiguousarray(self.pixels), "raw", "BGRX", 0, 1)

    def black_out(self, rect: Rect) -> None:
        """Paint a root-coordinate rectangle black, clipped to this frame."""
        inside = self.area.intersect(rect)
        if inside is None:
            return
        x, y = inside.left - self.area.left, inside.top - self.area.top
        self.pixels[y:y + inside.height, x:x + inside.width] = 0


def display_problem() -> str | None:
    """Why there is no screen to grab here, or None when there may be one (mss decides for sure)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        if os.environ.get("WAYLAND_DISPLAY"):
            return "this is a Wayland session without DISPLAY: omnid grabs the screen through X11 (XWayland)"
        return "the daemon has no DISPLAY: start omnid inside the graphical session (or export DISPLAY=:N)"
    return None


class ScreenGrabber:
    """An open mss connection that grabs one monitor or a region of it. Use from one thread."""

    def __init__(self, monitor: int = 1, region: Rect | None = None) -> None:
        problem = display_problem()
        if problem:
            raise ScreenUnavailable(problem)
        try:
            self._sct = mss.MSS()
            monitors = self._sct.monitors
        except Exception as exc:  # mss raises ScreenShotError (and ctypes errors) when there is no X server
            raise ScreenUnavailable(f"cannot open the screen: {exc}") from None
        if monitor < 0 or monitor >= len(monitors):
            self._sct.close()
            raise ScreenUnavailable(f"no monitor {monitor}: this screen has monitors 0..{len(monitors) - 1} "
                                    "(0 = all together)")
        m = monitors[monitor]
        whole = Rect(m["left"], m["top"], m["width"], m["height"])
        if region is not None:
            inside = whole.intersect(Rect(whole.left + region.left, whole.top + region.top,
                                          region.width, region.height))
            if inside is None:
                self._sct.close()
                raise InputError(f"the region {region} lies outside monitor {monitor} ({whole.width}x{whole.height})")
            whole = inside
        self.monitor = monitor
        self.area = whole

    def grab(self) -> Frame:
        area = self.area
        try:
            shot = self._sct.grab({"left": area.left, "top": area.top, "width": area.width, "height": area.height})
        except Exception as exc:
            raise ScreenUnavailable(f"the screen grab failed: {exc}") from None
        pixels = np.frombuffer(shot.raw, np.uint8).reshape(shot.height, shot.width, 4)
        if not pixels.flags.writeable:
            pixels = pixels.copy()
        return Frame(pixels, area, self.monitor, time.time())

    def close(self) -> None:
        self._sct.close()

    def __enter__(self) -> "ScreenGrabber":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
