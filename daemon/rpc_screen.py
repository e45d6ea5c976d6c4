"""The screen RPCs: the watcher's lifetime, its event stream, one-off grabs, the searchable history.

The watcher (modalities/screen_watcher.py) runs on its own thread in the daemon and turns each changed
frame into one decoder job; this mixin owns it, stores what the model says in the screen history and
fans observations out to every WatchScreen stream. Grabs for ScreenOnce and for ScreenRef parts of Generate
are taken in the calling handler's thread with the same exclusions, so no path hands the model a frame that
skipped them.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
from typing import Iterator

import grpc
import numpy as np
from PIL import Image

from omnid.daemon import jobs
from omnid.daemon.config import private_dir
from omnid.daemon.errors import NotFound
from omnid.daemon.rpc_base import Deletion, RpcBase
from omnid.daemon.sampling import SamplingParams
from omnid.modalities.screen_capture import ScreenGrabber
from omnid.modalities.screen_store import Observation, ScreenStore
from omnid.modalities.screen_watcher import (ONCE_INSTRUCTION, ChangedFrame, Observed, ScreenWatcher,
                                             WatchSettings, prepare_frame)
from omnid.modalities.windows import ExclusionRules, WindowLister
from omnid.models.base import InputError, Segment, require
from omnid.proto import omnid_pb2 as pb

log = logging.getLogger(__name__)

ASK_CANDIDATES = 200
#: The frames kept in the history: JPEG quality and largest side (text on screen stays readable).
FRAME_QUALITY = 75
FRAME_MAX_SIDE = 1280
SUBSCRIBER_QUEUE = 256
_END = object()
_GONE = object()  # the client went away


class _Broadcast:
    """Fan-out of ScreenEvents to every WatchScreen stream; a slow stream loses its oldest events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: set[queue.Queue] = set()

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(SUBSCRIBER_QUEUE)
        with self._lock:
            self._queues.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._queues.discard(q)

    def publish(self, event: object) -> None:
        with self._lock:
            targets = list(self._queues)
        for q in targets:
            while True:
                try:
                    q.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass


class ScreenRpcs(RpcBase):
    def setup(self) -> None:
        super().setup()
        self._screen_lock = threading.Lock()
        self._screen_watcher: ScreenWatcher | None = None
        self._screen_readers: list[threading.Thread] = []
        self._screen_store_: ScreenStore | None = None
        self._screen_events = _Broadcast()

    def close(self) -> None:
        with self._screen_lock:
            watcher, self._screen_watcher = self._screen_watcher, None
        if watcher is not None:
            watcher.stop()
        for reader in self._screen_readers:
            reader.join(5.0)  # its last writes to the history land before the store closes
        self._screen_events.publish(_END)
        if self._screen_store_ is not None:
            self._screen_store_.close()
        super().close()

    # -- helpers ---------------------------------------------------------------------------------------------

    @property
    def _screen_store(self) -> ScreenStore:
        """Opened on first use, so a daemon that never watches the screen writes nothing for it."""
        with self._screen_lock:
            if self._screen_store_ is None:
                self._screen_store_ = ScreenStore(private_dir(self.config.data_dir / "screen") / "history.sqlite",
                                                  self.config.screen_history_bytes)
            return self._screen_store_

    def _grab_for_model(self, monitor: int, instruction: str) -> ChangedFrame:
        """One frame now, exclusions applied, sized for the vision encoder."""
        require(self.info, "image", "look at the screen")
        with ScreenGrabber(monitor) as grabber:
            frame = grabber.grab()
        lister = WindowLister()
        try:
            windows = lister.windows()
        finally:
            lister.close()
        changed, exclusion = prepare_frame(frame, windows, ExclusionRules(), self.info.max_image_side, instruction)
        if changed is None:
            raise InputError(f"excluded windows cover {exclusion.coverage:.0%} of monitor {monitor}; "
                             "nothing was sent to the model", unsupported=True)
        return changed

    def _state(self) -> pb.ScreenWatchState:
        w = self._screen_watcher
        if w is None:
            return pb.ScreenWatchState(watching=False, exclusions=ExclusionRules().describe())
        c = w.counters
        return pb.ScreenWatchState(
            watching=w.running, paused=w.paused, interval_seconds=w.settings.interval, monitor=w.settings.monitor,
            frames_grabbed=c.frames_grabbed, frames_unchanged=c.frames_unchanged,
            frames_excluded=c.frames_excluded, frames_sent=c.frames_sent, exclusions=w.rules.describe())

    def _read_watcher(self, watcher: ScreenWatcher) -> None:
        """A watcher's observations into the history and out to every WatchScreen stream (its own thread)."""
        for event in watcher.events():
            if isinstance(event, Observed):
                frame = event.frame
                try:
                    obs = self._screen_store.add(frame.time_unix, frame.monitor, frame.app, frame.window, event.text,
                                                 frame_jpeg(frame.image.rgb))
                except Exception as exc:  # a full disk loses this observation, not the watcher
                    log.warning("screen history: could not store an observation: %s", exc)
                    continue
                self._screen_events.publish(pb.ScreenEvent(observation=_observation(obs)))
            else:
                if event.reason != "stopped":
                    log.warning("screen watcher %s", event.reason)
                self._screen_events.publish(pb.ScreenEvent(state=self._state()))

    def screen_frame(self, observation_id: str) -> bytes | None:
        """The frame kept with one observation (by id or unique prefix), for the history page; None if none."""
        store = self._screen_store
        full_id = store.resolve(observation_id)
        return store.frame(full_id) if full_id else None

    # -- parts of Generate -----------------------------------------------------------------------------------

    def resolve_screen_part(self, ref: pb.ScreenRef) -> list[Segment]:
        return [self._grab_for_model(ref.monitor, "").image]

    # -- RPCs ------------------------------------------------------------------------------------------------

    def StartScreenWatch(self, request: pb.ScreenWatchRequest, context: grpc.ServicerContext) -> pb.ScreenWatchState:
        def start() -> pb.ScreenWatchState:
            require(self.info, "image", "look at the screen")
            if request.change_threshold < 0 or request.change_threshold > 1:
                raise ValueError("change_threshold is a fraction between 0 and 1")
            settings = WatchSettings(interval=request.interval_seconds or 1.0, monitor=request.monitor,
                                     prompt=request.prompt, threshold=request.change_threshold,
                                     max_image_side=self.info.max_image_side)
            rules = ExclusionRules().with_names(request.exclude)
            store = self._screen_store  # open it now: a broken data dir fails the start, not each frame

            watcher = ScreenWatcher(settings, rules, self.scheduler)
            reader = threading.Thread(target=self._read_watcher, args=(watcher,), name="omnid-screen-history",
                                      daemon=True)
            with self._screen_lock:
                old, self._screen_watcher = self._screen_watcher, watcher
                self._screen_readers = [r for r in self._screen_readers if r.is_alive()] + [reader]
            reader.start()
            if old is not None:  # a new start replaces the old settings
                old.stop()
            watcher.start()
            log.info("screen watcher started: monitor %d every %.2f s; history in %s",
                     settings.monitor, settings.interval, store.path)
            state = self._state()
            self._screen_events.publish(pb.ScreenEvent(state=state))
            return state
        return self.call(context, start)

    def StopScreenWatch(self, request: pb.ScreenControlRequest, context: grpc.ServicerContext) -> pb.ScreenWatchState:
        """Stop watching; like pause, a stop with nothing to stop is FAILED_PRECONDITION."""
        def stop() -> pb.ScreenWatchState:
            with self._screen_lock:
                watcher = self._screen_watcher
            if watcher is None or not watcher.running:
                raise _not_watching()
            watcher.stop()
            state = self._state()
            state.watching = state.paused = False
            return state
        return self.call(context, stop)

    def ControlScreenWatch(self, request: pb.ScreenControlRequest,
                           context: grpc.ServicerContext) -> pb.ScreenWatchState:
        def control() -> pb.ScreenWatchState:
            action = request.action.strip().lower()
            if action not in ("pause", "resume", "status"):
                raise ValueError(f"unknown action {request.action!r}: use pause, resume or status")
            watcher = self._screen_watcher
            if action != "status":
                if watcher is None or not watcher.running:
                    raise _not_watching()
                watcher.pause() if action == "pause" else watcher.resume()
                self._screen_events.publish(pb.ScreenEvent(state=self._state()))
            return self._state()
        return self.call(context, control)

    def WatchScreen(self, request: pb.WatchScreenRequest, context: grpc.ServicerContext) -> Iterator[pb.ScreenEvent]:
        q = self._screen_events.subscribe()
        # A client that leaves wakes the stream at once, so its thread and its stream slot (admission.py) are
        # free now, not at the next poll.
        context.add_callback(lambda: _wake(q))
        try:
            yield pb.ScreenEvent(state=self._state())
            while context.is_active():
                try:
                    event = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if event is _GONE:
                    return
                if event is _END:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down")
                yield event
        finally:
            self._screen_events.unsubscribe(q)

    def ScreenOnce(self, request: pb.ScreenOnceRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateEvent]:
        frame = self.call(context, lambda: self._grab_for_model(request.monitor, request.prompt or ONCE_INSTRUCTION))
        max_tokens, sampling = self.call(context, lambda: self.answer_limits(request.max_tokens, SamplingParams()))
        job = jobs.describe_frame(frame, max_tokens, sampling)
        yield from self.answer_stream(job, context, "screen-once", pb.GenerateEvent)

    def SearchScreen(self, request: pb.SearchScreenRequest, context: grpc.ServicerContext) -> pb.SearchScreenReply:
        found = self.call(context, lambda: self._screen_store.search(
            request.query, request.limit or 20, request.since_unix, request.until_unix))
        return pb.SearchScreenReply(observations=[_observation(o) for o in found])

    def AskScreen(self, request: pb.AskScreenRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateEvent]:
        def gather() -> list[Observation]:
            if not request.question.strip():
                raise ValueError("the question is empty")
            store = self._screen_store
            since, until = request.since_unix, request.until_unix
            found = {o.id: o for o in store.search("", ASK_CANDIDATES, since, until)}
            found.update({o.id: o for o in store.search(request.question, ASK_CANDIDATES, since, until,
                                                        any_word=True)})
            if not found:
                raise NotFound("no screen observations in that time range (watch with `omni screen watch`)")
            return sorted(found.values(), key=lambda o: o.time_unix)
        observations = self.call(context, gather)
        max_tokens, sampling = self.call(context, lambda: self.answer_limits(request.max_tokens, SamplingParams()))
        job = jobs.ask_screen(observations, request.question.strip(), max_tokens, sampling)
        yield from self.answer_stream(job, context, "ask-screen", pb.GenerateEvent)

    def DeleteScreenHistory(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteReply:
        def delete() -> pb.DeleteReply:
            what = Deletion.of(request)
            store = self._screen_store
            ids = []
            for given in what.ids:
                full_id = store.resolve(given)
                if full_id is None:
                    raise NotFound(f"no screen observation {given!r} (see `omni screen search`)")
                ids.append(full_id)
            deleted = store.delete(ids, what.since, what.until, everything=what.everything)
            log.info("deleted %d screen observations", deleted)
            return pb.DeleteReply(deleted=deleted, deleted_ids=ids if what.ids else [])
        return self.call(context, delete)


def frame_jpeg(rgb: np.ndarray) -> bytes:
    """A frame as the history keeps it: the pixels the model was shown, as a JPEG at most FRAME_MAX_SIDE
    wide or high (some tens of KB: the history's byte budget holds thousands of frames with their words)."""
    image = Image.fromarray(rgb)
    image.thumbnail((FRAME_MAX_SIDE, FRAME_MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=FRAME_QUALITY)
    return out.getvalue()


def _wake(q: queue.Queue) -> None:
    try:
        q.put_nowait(_GONE)
    except queue.Full:  # a full queue is read at once anyway, and is_active() is then False
        pass


def _not_watching() -> InputError:
    return InputError("the screen is not being watched (start with `omni screen watch`)", unsupported=True)


def _observation(o: Observation) -> pb.ScreenObservation:
    return pb.ScreenObservation(time_unix=o.time_unix, monitor=o.monitor, app=o.app, window=o.window,
                                text=o.text, id=o.id)

