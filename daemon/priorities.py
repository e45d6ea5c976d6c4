"""Which waiting job gets the next free decoder sequence: interactive work first, background never starved.

Why two classes: one daemon serves every app at once, and a user's question (Generate, a conversation, a
document or screen question, any HTTP call) must not wait behind work nobody is watching for this second (a
meeting clip, a screen-watcher frame, a document warm-up). Why an age bound: background work must still end
(a transcript, the screen index), so a background job passed over PASS_LIMIT times is taken like an interactive
one. Why a per-client cap: one client (an agent making parallel calls) must not take every sequence while other
clients wait; a client over the cap is served only when no other client's job waits.

The same queue orders the one-sequence scheduler (nothing else changes there: one job at a time, by class,
then in arrival order) and the batching scheduler (several jobs at once, see daemon/batch_engine.py, where
the same classes also decide whose prefill chunk goes into each decode step).
"""
from __future__ import annotations

import enum
import itertools
import threading
from dataclasses import dataclass, field
from typing import Generic, Mapping, TypeVar

H = TypeVar("H")


class Priority(enum.IntEnum):
    """Lower runs first."""

    INTERACTIVE = 0
    BACKGROUND = 1


#: Job names (as front ends submit them) of work nobody waits on interactively.
BACKGROUND_JOBS = frozenset({"meeting-clip", "screen-frame", "warm-document", "measure-document"})
#: A background job passed over this many times by interactive ones is taken next (the age bound).
PASS_LIMIT = 4


def priority_of(name: str) -> Priority:
    """The class of a job by its name (see BACKGROUND_JOBS)."""
    return Priority.BACKGROUND if name in BACKGROUND_JOBS else Priority.INTERACTIVE


class QueueFull(Exception):
    """Too many requests of one class are waiting for the decoder."""


@dataclass
class _Waiting(Generic[H]):
    handle: H
    priority: Priority
    client: str
    order: int
    passed_over: int = field(default=0)


class AdmissionQueue(Generic[H]):
    """Jobs waiting for a sequence, bounded per class; `take` says which one runs next. Thread-safe."""

    def __init__(self, limits: Mapping[Priority, int]) -> None:
        self.limits = dict(limits)
        self._lock = threading.Lock()
        self._items: list[_Waiting[H]] = []
        self._orders = itertools.count()

    def push(self, handle: H, priority: Priority, client: str) -> int:
        """Queue a job; its arrival number. QueueFull when its class is at its limit."""
        with self._lock:
            waiting = sum(1 for w in self._items if w.priority == priority)
            limit = self.limits[priority]
            if waiting >= limit:
                raise QueueFull(f"{limit} {'background ' if priority == Priority.BACKGROUND else ''}requests "
                                "are already waiting for the decoder; try again later")
            order = next(self._orders)
            self._items.append(_Waiting(handle, priority, client, order))
            return order

    def take(self, held: Mapping[str, int], cap: int, background: bool = True,
             before: int | None = None) -> H | None:
        """The job to run next, removed from the queue, or None.

        `held`: sequences each client holds now; a client holding `cap` or more is served only when no other
        client's job waits. `background`: whether a background job may be taken now (the batching scheduler
        keeps the last free sequence for interactive work). `before`: only jobs that arrived before that
        arrival number (an unload waits for the jobs queued ahead of it, and lets none pass).
        """
        with self._lock:
            items = [w for w in self._items if before is None or w.order < before]
            if not background:
                items = [w for w in items if self._effective(w) == Priority.INTERACTIVE]
            if not items:
                return None
            best = min(items, key=lambda w: (held.get(w.client, 0) >= cap, self._effective(w), w.order))
            for w in self._items:
                if w.priority == Priority.BACKGROUND and w.order < best.order:
                    w.passed_over += 1
            self._items.remove(best)
            return best.handle

    def drain(self) -> list[H]:
        """Every waiting job, removed (at shutdown)."""
        with self._lock:
            items, self._items = self._items, []
        return [w.handle for w in items]

    def waiting(self) -> list[H]:
        """The waiting jobs, by class and then arrival (the order `take` would use with no cap in play)."""
        with self._lock:
            items = sorted(self._items, key=lambda w: (self._effective(w), w.order))
        return [w.handle for w in items]

    def depth(self, priority: Priority | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._items if priority is None or w.priority == priority)

    def any_before(self, order: int) -> bool:
        """Whether a job that arrived before arrival number `order` still waits."""
        with self._lock:
            return any(w.order < order for w in self._items)

    def next_order(self) -> int:
        """The arrival number the next job will get (what an unload waits behind)."""
        with self._lock:
            return next(self._orders)

    @staticmethod
    def _effective(w: _Waiting[H]) -> Priority:
        return Priority.INTERACTIVE if w.passed_over >= PASS_LIMIT else w.priority
