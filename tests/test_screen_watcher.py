"""The screen pipeline on a real X screen (Xvfb + Tk windows), without the model.

The model's place is taken by a FAKE decoder queue that records the frames it is given and answers at once:
these tests are about which frames reach the model and what pixels they carry. The real model path is in
test_screen_rpc.py.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from screen_x11 import TkWindow, Xvfb, xvfb_missing

from omnid.modalities.screen_capture import ScreenGrabber, ScreenUnavailable
from omnid.modalities.screen_watcher import (ChangedFrame, FrameDescription, Observed, ScreenWatcher, Stopped,
                                             WatchSettings, prepare_frame)
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


class _Answered:
    def __init__(self, text: str) -> None:
        self.text = text

    def result(self) -> str:
        return self.text

    def cancel(self) -> None:
        pass


class FakeDecoderQueueForWatcherTests:
    """FAKE model (a DecoderQueue): records every frame submitted and answers with a fixed text at once."""

    def __init__(self) -> None:
        self.frames: list[ChangedFrame] = []

    def submit_work(self, work: FrameDescription, name: str) -> _Answered:
        self.frames.append(work.frame)
        return _Answered(f"fake observation {len(self.frames)}")


def make_watcher(sink: FakeDecoderQueueForWatcherTests, **settings) -> ScreenWatcher:
    return ScreenWatcher(WatchSettings(**settings), ExclusionRules(), sink)


def tick(watcher: ScreenWatcher, sink: FakeDecoderQueueForWatcherTests) -> None:
    """One synchronous tick; a frame sent is read back from events() at once, which frees the model's slot."""
    sent = watcher.counters.frames_sent
    watcher.tick()
    if watcher.counters.frames_sent > sent:
        event = next(_events(watcher))
        assert isinstance(event, Observed) and event.frame is sink.frames[-1]
        assert event.text == f"fake observation {len(sink.frames)}"


def _events(watcher: ScreenWatcher):
    """One events() reader per watcher, kept on it."""
    if not hasattr(watcher, "_test_events"):
        watcher._test_events = watcher.events()  # type: ignore[attr-defined]
    return watcher._test_events  # type: ignore[attr-defined]


def has_color(frame: ChangedFrame, rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    px = frame.image.rgb.astype(np.int16)
    close = np.all(np.abs(px - np.array(rgb, dtype=np.int16)) <= tolerance, axis=2)
    return bool(close.any())


def test_unchanged_frames_do_not_reach_the_model_and_changed_ones_do(display):
    win = display("Notes", "500x300+100+100", "#2040c0")
    sink = FakeDecoderQueueForWatcherTests()
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
    sink = FakeDecoderQueueForWatcherTests()
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
    sink = FakeDecoderQueueForWatcherTests()
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
    sink = FakeDecoderQueueForWatcherTests()
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


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll a condition until it holds (a deadline for a busy machine, not a speed claim)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def test_the_thread_loop_pauses_resumes_counts_cpu_and_ends_its_events_with_stopped(display):
    display("Clock", "300x200+0+0", "white")
    sink = FakeDecoderQueueForWatcherTests()
    watcher = make_watcher(sink, monitor=1, interval=0.05)
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(watcher.events()))
    watcher.start()
    reader.start()
    try:
        assert wait_until(lambda: any(isinstance(e, Observed) for e in events))
        watcher.pause()
        paused_at = watcher.counters.frames_grabbed
        threading.Event().wait(5 * watcher.settings.interval)  # five periods in which ticks would have run
        assert watcher.counters.frames_grabbed <= paused_at + 1  # at most the tick already under way
        watcher.resume()
        assert wait_until(lambda: watcher.counters.frames_grabbed > paused_at + 2)
        assert watcher.counters.cpu_seconds > 0
    finally:
        watcher.stop()
        reader.join(10)
    assert not watcher.running and not reader.is_alive()
    assert events[-1] == Stopped("stopped")
    assert [e.frame for e in events if isinstance(e, Observed)] == sink.frames


def test_no_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(ScreenUnavailable, match="no DISPLAY"):
        ScreenGrabber(1)
    assert "DISPLAY" not in os.environ
