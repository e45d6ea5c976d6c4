"""How fast this machine prefills, measured on the prompts it really evaluates.

Why measured and not computed: the rate depends on the model, the threads, the CPU or GPU and what else the
machine runs. The daemon uses it to say in advance what a question will cost (a document larger than the
context: "a cold question takes about 9 minutes") and the Status RPC shows it.
"""
from __future__ import annotations

import threading

#: Prefills shorter than this say more about per-call overheads than about the rate.
MIN_TOKENS = 256
#: Weight of the newest measurement in the running rate (the machine's load changes).
WEIGHT = 0.3


class PrefillRate:
    """Tokens per second of prefill, a running average over the evaluations of MIN_TOKENS or more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate = 0.0

    def record(self, tokens: int, seconds: float) -> None:
        """One evaluation of `tokens` tokens that took `seconds` (a restored prefix not included)."""
        if tokens < MIN_TOKENS or seconds <= 0:
            return
        rate = tokens / seconds
        with self._lock:
            self._rate = rate if not self._rate else (1 - WEIGHT) * self._rate + WEIGHT * rate

    @property
    def tokens_per_second(self) -> float:
        """The running rate; 0 until something long enough was evaluated."""
        with self._lock:
            return self._rate

    def seconds_for(self, tokens: int) -> float:
        """How long evaluating `tokens` tokens takes at the running rate (0 when not measured yet)."""
        rate = self.tokens_per_second
        return tokens / rate if rate else 0.0
