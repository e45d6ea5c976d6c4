"""Which of several engines serves a request: prefix affinity first, then the least loaded; dead ones skipped.

Why affinity: each engine's prefix cache (vLLM's automatic prefix caching, SGLang's radix cache, llama-server's
slots) only helps requests that land where their prefix was evaluated before, so requests sharing a prefix key
(the prompt's last cache point: a system text, a document, an image) stay on one engine. A prompt with no key,
or whose engine is dead, goes to the engine with the fewest requests in flight (then the fewest served). A
failed engine is skipped for `retry_after` seconds, then tried again; when every engine is down the one that
failed longest ago is tried, so the daemon recovers as soon as any engine comes back.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Sequence

from omnid.models.remote_http import Engine

#: Prefix keys remembered (an OrderedDict used as an LRU: a few hundred bytes each).
AFFINITY_KEYS = 4096


class Router:
    def __init__(self, engines: Sequence[Engine], retry_after: float = 5.0) -> None:
        if not engines:
            raise ValueError("a router needs at least one engine")
        self.engines = list(engines)
        self.retry_after = retry_after
        self._affinity: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def order(self, key: str | None) -> list[Engine]:
        """The engines to try for a request with this prefix key, best first (every engine appears once)."""
        now = time.monotonic()
        with self._lock:
            alive = [e for e in self.engines if e.dead_until <= now]
            dead = sorted((e for e in self.engines if e.dead_until > now), key=lambda e: e.dead_until)
            ranked = sorted(alive, key=lambda e: (e.in_flight, e.served))
            home = self._affinity.get(key) if key else None
            if home is not None and home in alive:
                ranked.remove(home)
                ranked.insert(0, home)
            return ranked + dead

    @contextmanager
    def lease(self, engine: Engine) -> Iterator[None]:
        """Count the request in flight on `engine`; the caller reports the outcome with ok() / failed()."""
        with self._lock:
            engine.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                engine.in_flight -= 1

    def ok(self, engine: Engine, key: str | None) -> None:
        with self._lock:
            engine.dead_until = 0.0
            engine.served += 1
            if key:
                self._affinity[key] = engine
                self._affinity.move_to_end(key)
                while len(self._affinity) > AFFINITY_KEYS:
                    self._affinity.popitem(last=False)

    def failed(self, engine: Engine) -> None:
        with self._lock:
            engine.dead_until = time.monotonic() + self.retry_after
