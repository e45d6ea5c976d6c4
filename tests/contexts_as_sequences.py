"""Several llama.cpp contexts of one model, held as the sequences of one Backend: a stand-in for the real
multi-sequence llama.cpp backend (one context, n_seq_max sequences) in tests/test_concurrency.py, for as long as
that backend is not there. Every token is evaluated by the real model; decode_batch is the one-after-another
default of models/base.py, so it proves the scheduler's batching path (engine, proxies, priorities, the step
records) on the real model, not any speed-up.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from omnid.models.base import Backend, ChatFrame, ChatRenderer, Segment, Snapshot, TextSegment


class ContextsAsSequences(Backend):
    """One Backend per sequence; `select` picks which one every call goes to."""

    def __init__(self, backends: Sequence[Backend], batch_capacity: int) -> None:
        self._all = list(backends)
        self._capacity = batch_capacity
        self._on = self._all[0]
        self.info = self._on.info

    @property
    def n_sequences(self) -> int:
        return len(self._all)

    def select(self, seq: int) -> None:
        self._on = self._all[seq]

    @property
    def batch_capacity(self) -> int:
        """The contexts' n_batch."""
        return self._capacity

    def chat_frame(self) -> ChatFrame:
        return self._on.chat_frame()

    def chat_renderer(self) -> ChatRenderer | None:
        return self._on.chat_renderer()

    @property
    def n_tokens(self) -> int:
        return self._on.n_tokens

    def reset(self) -> None:
        self._on.reset()

    def count_tokens(self, segment: Segment) -> int:
        return self._on.count_tokens(segment)

    def tokenize(self, segment: TextSegment) -> list[int]:
        return self._on.tokenize(segment)

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        self._on.append_tokens(tokens, should_stop)

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        return self._on.append(segment, should_stop)

    @property
    def can_truncate(self) -> bool:
        return self._on.can_truncate

    def truncate(self, n_tokens: int) -> bool:
        return self._on.truncate(n_tokens)

    def logits(self) -> np.ndarray:
        return self._on.logits()

    def append_token(self, token: int) -> None:
        self._on.append_token(token)

    def token_bytes(self, token: int) -> bytes:
        return self._on.token_bytes(token)

    def is_end_of_generation(self, token: int) -> bool:
        return self._on.is_end_of_generation(token)

    def snapshot(self) -> Snapshot:
        return self._on.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        self._on.restore(snapshot)

    def close(self) -> None:
        for backend in self._all:
            backend.close()
