"""The screen pipeline on a real X screen (Xvfb + Tk windows), without the model.

The model's place is taken by a FAKE sink that records the frames it is given and answers at once: these
tests are about which frames reach the model and what pixels they carry. The real model path is in
test_screen_rpc.py.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from screen_x11 import TkWindow, Xvfb, xvfb_missing

from omnid.modalities.screen_capture import ScreenGrabber, ScreenUnavailable
from omnid.modalities.screen_watcher import ChangedFrame, ScreenWatcher, WatchSettings, prepare_frame
from omnid.modalities.windows import ExclusionRules, WindowLister

pytestmark = pytest.mark.skipif(xvfb_missing() is not None, reason=xvfb_missing() or "")

MAGENTA = (255, 0, 255)


@pytest.fixture(scope="module")
def xvfb():
    server = Xvfb(1280, 720)
    yield server
    server.close()


@pytest.fixture
def display(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb.display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    windows: list[TkWindow] = []

    def open_window(*args, **kwargs) -> TkWindow:
        w = TkWindow(xvfb.display, *args, **kwargs)
        windows.append(w)
        return w
    yield open_window
    for w in windows:
        w.close()


class FakeModelSink:
    """FAKE model: records every frame submitted and answers with a fixed text immediately."""

    def __init__(self) -> None:
        self.frames: list[ChangedFrame] = []
        self.observations: list[tuple[ChangedFrame, str]] = []
        self.answered = threading.Event()

    def submit(self, frame: ChangedFrame):
        self.frames.append(frame)
        sink = self

        class Handle:
            def result(self):
                return f"fake observation {len(sink.frames)}"

            def cancel(self):
                pass
        return Handle()

    def on_observation(self, frame: ChangedFrame, text: str) -> None:
        self.observations.append((frame, text))
        self.answered.set()


def make_watcher(sink: FakeModelSink, **settings) -> ScreenWatcher:
    return ScreenWatcher(WatchSettings(**settings), ExclusionRules(), sink.submit, sink.on_observation)


def tick(watcher: ScreenWatcher, sink: FakeModelSink) -> None:
    """One synchronous tick, then wait for the fake model's answer so the slot is free again."""
    sent = watcher.counters.frames_sent
    watcher.tick()
    if watcher.counters.frames_sent > sent:
        assert sink.answered.wait(5)
        sink.answered.clear()
        watcher._model_free.wait(5)


def has_color(frame: ChangedFrame, rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    px = frame.image.rgb.astype(np.int16)
    close = np.all(np.abs(px - np.array(rgb, dtype=np.int16)) <= tolerance, axis=2)
    return bool(close.any())


def test_unchanged_frames_do_not_reach_the_model_and_changed_ones_do(display):
    win = display("Notes", "500x300+100+100", "#2040c0")
    sink = FakeModelSink()
    watcher = make_watcher(sink, monitor=1, max_image_side=512)
    try:
        tick(watcher, sink)                      # the first frame is always news
        for _ in range(5):
            tick(watcher, sink)                  # a static screen: nothing more for the model
        c = watcher.counters
        assert (c.frames_grabbed, c.frames_sent, c.frames_unchanged) == (6, 1, 5)
        win.color("#20c040")                     # a big change
        tick(watcher, sink)
        assert c.frames_sent == 2
        assert max(sink.frames[-1].image.rgb.shape[:2]) <= 512
        # The rolling instruction carries the previous observation.
        assert "fake observation 1" in sink.frames[-1].instruction
        tick(watcher, sink)
        assert c.frames_sent == 2 and c.frames_unchanged == 6
    finally:
        watcher.stop()


def test_a_tiny_change_is_near_identical_and_skipped(display):
    win = display("Doc", "400x200+50+50", "white")
    sink = FakeModelSink()
    watcher = make_watcher(sink, monitor=1, threshold=0.05)
    try:
        tick(watcher, sink)
        win.text("Doc.")                         # a few pixels of a label: under 5% of the screen
        tick(watcher, sink)
        assert watcher.counters.frames_sent == 1 and watcher.counters.frames_unchanged == 1
    finally:
        watcher.stop()


def test_private_windows_are_blacked_out_even_unfocused_and_never_trigger_a_frame(display):
    private = display("Bank - Chromium (Incognito)", "300x200+700+100", "#ff00ff")
    other = display("Editor", "400x300+100+300", "#2040c0")
    other.focus()                                # the private window is not focused
    sink = FakeModelSink()
    watcher = make_watcher(sink, monitor=1, max_image_side=1280)
    try:
        tick(watcher, sink)
        assert watcher.counters.frames_sent == 1
        assert not has_color(sink.frames[0], MAGENTA), "an excluded window's pixels reached the model"
        assert sink.frames[0].app == "Tk" and sink.frames[0].window == "Editor"
        private.color("#ff00fe")                 # changes inside the excluded window are invisible
        private.text("balance 1,234")
        tick(watcher, sink)
        assert watcher.counters.frames_sent == 1
        private.title("Bank")                    # no longer private: now it may be seen (once pixels change:
        private.color("#ff00fd")                 # without a window manager a title is not drawn anywhere)
        tick(watcher, sink)
        assert watcher.counters.frames_sent == 2
        assert has_color(sink.frames[-1], (255, 0, 253))
    finally:
        watcher.stop()


def test_excluded_app_names_and_frames_mostly_excluded_are_dropped(display):
    display("vault", "1280x720+0+0", "#ff00ff", wm_class="KeePassXC")
    sink = FakeModelSink()
    watcher = make_watcher(sink, monitor=1)
    try:
        tick(watcher, sink)
        assert watcher.counters.frames_excluded == 1 and sink.frames == []
    finally:
        watcher.stop()


def test_user_exclusions_match_titles_case_insensitively(display):
    display("Secret Plans", "300x200+0+0", "#ff00ff")
    frame = ScreenGrabber(1).grab()
    lister = WindowLister()
    try:
        changed, exclusion = prepare_frame(frame, lister.windows(), ExclusionRules().with_names(["secret"]),
                                           1280, "x")
    finally:
        lister.close()
    assert [w.title for w in exclusion.excluded] == ["Secret Plans"]
    assert changed is not None and not has_color(changed, MAGENTA)


def test_region_and_monitor_errors(display):
    with pytest.raises(ScreenUnavailable, match="no monitor 7"):
        ScreenGrabber(7)
    from omnid.modalities.screen_capture import Rect
    g = ScreenGrabber(1, Rect(100, 100, 320, 240))
    try:
        assert g.grab().pixels.shape == (240, 320, 4)
    finally:
        g.close()


def test_the_thread_loop_pauses_and_counts_cpu(display):
    display("Clock", "300x200+0+0", "white")
    sink = FakeModelSink()
    watcher = make_watcher(sink, monitor=1, interval=0.05)
    watcher.start()
    try:
        assert sink.answered.wait(5)
        watcher.pause()
        grabbed = watcher.counters.frames_grabbed
        threading.Event().wait(0.3)
        assert watcher.counters.frames_grabbed <= grabbed + 1   # at most the tick already under way
        watcher.resume()
        threading.Event().wait(0.3)
        assert watcher.counters.frames_grabbed > grabbed + 1
        assert watcher.counters.cpu_seconds > 0
    finally:
        watcher.stop()
    assert not watcher.running


def test_no_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(ScreenUnavailable, match="no DISPLAY"):
        ScreenGrabber(1)
    assert "DISPLAY" not in os.environ
