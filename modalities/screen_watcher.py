"""The screen watcher loop: grab -> exclude -> fingerprint -> one model job per changed frame.

It runs on its own thread in the daemon. Per tick (default 1 s):

  1. grab the monitor/region (mss, ~5 ms for 1920x1080);
  2. fingerprint it (~0.2 ms); identical to the previous grab -> done: no window list, no conversion;
  3. otherwise list the windows and black out excluded ones in the frame itself; drop the frame when they
     cover most of it (privacy is applied before anything else sees the pixels);
  4. compare the masked fingerprint with the last frame sent: near-identical -> done;
  5. convert once to RGB at the vision encoder's size and send a `FrameDescription` of it to the decoder
     (the DecoderQueue the watcher was given: the daemon's scheduler).

The model never runs on this thread, and the watcher never calls into its owner: the owner reads
`events()` (each frame's observation as the model finishes it, then why the watcher stopped). At most one
frame is with the model at a time: while it is, changed frames are not queued behind it (the decoder is
shared with every other client), and the newest change is sent as soon as the model is free, because the
last-sent fingerprint still differs. Frames are independent
prompts: system text (cached once in the shared prompt cache) + the frame + a rolling instruction that
carries the previous observation, so the model can say what changed. Nothing is ever written to disk here.

CPU: the thread's own CPU time (time.thread_time) is counted, so the cost of watching is measured apart
from the model's.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

from omnid.modalities.decoder import Decoder, DecoderQueue, Pending, Prompt, SamplingParams
from omnid.modalities.images import image_segment
from omnid.modalities.screen_capture import Frame, Rect, ScreenGrabber
from omnid.modalities.screen_change import ChangeDetector, fingerprint, grid_step, mask_cells
from omnid.modalities.windows import ExclusionRules, WindowInfo, WindowLister, apply_exclusions
from omnid.models.base import ImageSegment, TextSegment

log = logging.getLogger(__name__)

SYSTEM_TEXT = (
    "You watch the user's screen to keep a private, searchable diary of what they see and do. For each "
    "screenshot, write one or two plain sentences naming the application, the document, page or "
    "conversation on screen, and what the user is doing. Quote visible headings or titles exactly. Never "
    "guess at content that is blacked out: black areas are private windows the user excluded.")
DEFAULT_INSTRUCTION = "Describe what changed on the screen since the previous observation."
ONCE_INSTRUCTION = "Describe what is on the screen."
PREVIOUS_CHARS = 400
DEFAULT_MAX_TOKENS = 96
MAX_CONSECUTIVE_GRAB_FAILURES = 10


@dataclass
class ChangedFrame:
    """A frame cleared for the model: already excluded and downscaled."""

    image: ImageSegment
    time_unix: float
    monitor: int
    app: str
    window: str
    instruction: str


@dataclass(frozen=True)
class Observed:
    """What the model said about a frame the watcher sent."""

    frame: ChangedFrame
    text: str


@dataclass(frozen=True)
class Stopped:
    """The watcher's last event: "stopped" when asked to, otherwise why it gave up."""

    reason: str


@dataclass
class WatchSettings:
    interval: float = 1.0
    monitor: int = 1
    region: Rect | None = None
    prompt: str = ""
    threshold: float = 0.0          # 0 = screen_change.DEFAULT_THRESHOLD
    max_image_side: int = 1024
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval <= 3600:
            raise ValueError(f"the interval must be between 0.05 and 3600 seconds, got {self.interval}")
        if self.monitor < 0:
            raise ValueError("the monitor number must be 0 (all) or more")


@dataclass
class WatchCounters:
    frames_grabbed: int = 0
    frames_unchanged: int = 0
    frames_excluded: int = 0
    frames_sent: int = 0
    frames_failed: int = 0          # sent but the model job failed
    cpu_seconds: float = 0.0        # this thread's CPU (grab, fingerprint, exclusion, conversion)
    grab_seconds: float = 0.0       # of which inside mss grab calls (wall time)


def rolling_instruction(prompt: str, previous: str) -> str:
    """The text after the frame: the app's own prompt, or "what changed" with the previous observation."""
    if prompt:
        return prompt
    if not previous:
        return ONCE_INSTRUCTION
    return f"Previous observation: {previous[:PREVIOUS_CHARS]}\n{DEFAULT_INSTRUCTION}"


def frame_prompt(session: Decoder, frame: ChangedFrame) -> Prompt:
    """System text + the frame + its instruction.

    The prompt's only cache point is after the system text: that prefix is shared by every frame, while a
    snapshot after a one-off screenshot would only evict something useful from the shared cache.
    """
    prompt = session.build_prompt([frame.image, TextSegment(frame.instruction)], SYSTEM_TEXT)
    return replace(prompt, cache_points=frozenset(sorted(prompt.cache_points)[:1]))


@dataclass(frozen=True)
class FrameDescription:
    """The decoder work for one watched frame: the model's text about it."""

    frame: ChangedFrame
    max_tokens: int

    def __call__(self, decoder: Decoder) -> str:
        decoder.prefill(frame_prompt(decoder, self.frame))
        return decoder.generate(self.max_tokens, SamplingParams()).text.strip()


def prepare_frame(frame: Frame, windows: list[WindowInfo], rules: ExclusionRules, max_image_side: int,
                  instruction: str) -> tuple[ChangedFrame | None, Any]:
    """Exclude, then convert a whole frame for the model (ScreenOnce, Generate's ScreenRef).

    Returns (None, exclusion) when excluded windows cover most of the frame.
    """
    exclusion, _ = apply_exclusions(frame, windows, rules)
    if exclusion.drop:
        return None, exclusion
    return _changed(frame, exclusion.focused, max_image_side, instruction), exclusion


def _changed(frame: Frame, focused: WindowInfo | None, max_side: int, instruction: str) -> ChangedFrame:
    return ChangedFrame(image=image_segment(frame.to_image(), max_side), time_unix=frame.time_unix,
                        monitor=frame.monitor, app=focused.app if focused else "",
                        window=focused.title if focused else "", instruction=instruction)


class ScreenWatcher:
    """One watching loop on its own thread; the owner reads what comes of it from `events()`."""

    def __init__(self, settings: WatchSettings, rules: ExclusionRules, decoder: DecoderQueue) -> None:
        self.settings = settings
        self.rules = rules
        self._decoder = decoder
        self.counters = WatchCounters()
        self._detector = ChangeDetector(settings.threshold)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._model_free = threading.Event()
        self._model_free.set()
        # Frames with the model (with their pending answers), then one Stopped: what events() reads.
        self._sent: queue.SimpleQueue[tuple[ChangedFrame, Pending[str]] | Stopped] = queue.SimpleQueue()
        self._inflight: Pending[str] | None = None
        self._previous_text = ""
        # Open the screen and the window list now, so a missing display fails the start call, not later.
        self._grabber = ScreenGrabber(settings.monitor, settings.region)
        try:
            self._windows = WindowLister()
        except Exception:
            self._grabber.close()
            raise
        self._thread = threading.Thread(target=self._run, name="omnid-screen-watch", daemon=True)

    # -- control ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        inflight = self._inflight
        if inflight is not None:
            inflight.cancel()
        if self._thread.ident is None:  # never started (driven by tick()): release the screen here
            self._grabber.close()
            self._windows.close()
            self._sent.put(Stopped("stopped"))
        elif threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self._detector.forget_previous()

    # -- the loop --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        reason = "stopped"
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                if not self._paused.is_set():
                    t0 = time.thread_time()
                    try:
                        self.tick()
                        failures = 0
                    except Exception as exc:
                        failures += 1
                        log.warning("screen watcher: tick failed (%d in a row): %s", failures, exc)
                        if failures >= MAX_CONSECUTIVE_GRAB_FAILURES:
                            reason = f"stopped after {failures} failed grabs: {exc}"
                            break
                    self.counters.cpu_seconds += time.thread_time() - t0
                next_tick += self.settings.interval
                now = time.monotonic()
                if next_tick < now:  # fell behind (a slow grab, a suspended machine): do not burst
                    next_tick = now + self.settings.interval
                self._stop.wait(next_tick - now if next_tick > now else 0)
        finally:
            self._stop.set()
            self._grabber.close()
            self._windows.close()
            self._sent.put(Stopped(reason))

    def tick(self) -> None:
        """One grab and what follows from it (public so tests and the bench can drive it step by step)."""
        c = self.counters
        t = time.perf_counter()
        frame = self._grabber.grab()
        c.grab_seconds += time.perf_counter() - t
        c.frames_grabbed += 1
        step = grid_step(frame.pixels.shape[1])
        fp = fingerprint(frame.pixels, step)
        if self._detector.identical(fp):
            c.frames_unchanged += 1
            return
        windows = self._windows.windows()
        exclusion, mask = apply_exclusions(frame, windows, self.rules, fp.shape, step)
        if exclusion.drop:
            c.frames_excluded += 1
            return
        masked = mask_cells(fp, mask) if mask is not None else fp
        if not self._detector.worth_sending(masked):
            c.frames_unchanged += 1
            return
        if not self._model_free.is_set():
            # The model is still on the last frame; this change stays "unsent" and goes out when it is free
            # (forgetting this grab makes the next one be compared with the last frame sent, not with this).
            self._detector.forget_previous()
            return
        changed = _changed(frame, exclusion.focused, self.settings.max_image_side,
                           rolling_instruction(self.settings.prompt, self._previous_text))
        try:
            handle = self._decoder.submit_work(FrameDescription(changed, self.settings.max_tokens), "screen-frame")
        except Exception as exc:  # queue full, shutting down: try again with a later frame
            log.info("screen watcher: frame not sent: %s", exc)
            self._detector.forget_previous()
            return
        self._model_free.clear()
        self._inflight = handle
        self._detector.mark_sent(masked)
        c.frames_sent += 1
        self._sent.put((changed, handle))

    def events(self) -> Iterator[Observed | Stopped]:
        """Each sent frame's observation as the model finishes it, then one Stopped: the watcher's output.

        Its owner reads this on a thread of its own (the watcher never calls into the daemon). The model's
        slot is free again once this has its answer, so the next changed frame can go out then.
        """
        while True:
            item = self._sent.get()
            if isinstance(item, Stopped):
                yield item
                return
            frame, handle = item
            try:
                text = handle.result()
            except Exception as exc:
                self.counters.frames_failed += 1
                if not self._stop.is_set():
                    log.warning("screen watcher: the model failed on a frame: %s", exc)
                continue
            finally:
                self._inflight = None
                self._model_free.set()
            self._previous_text = text
            yield Observed(frame, text)
