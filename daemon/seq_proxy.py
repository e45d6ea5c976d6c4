"""One sequence of a multi-sequence backend, as a whole one-sequence Backend, for a job in its own thread.

Why a proxy: every pipeline is written against DecoderSession, which drives one Backend synchronously. With
several sequences, each job gets a DecoderSession over a SequenceBackend: each call is handed to the batching
engine (daemon/batch_engine.py), which selects this sequence and makes the call on the backend's own thread,
and the job thread blocks until it is done. Token appends are batched with other sequences' by the engine;
every other call runs between its steps.

What needs no hand-off is answered here: the sequence's token count (tracked from what the calls return),
the logits the last append returned (handed over once), and the pure functions of the vocabulary
(token_bytes, is_end_of_generation: memoized in a table shared by every proxy of one backend), so a decode
step costs the job thread one hand-off, not four.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

from omnid.daemon.batch_engine import BatchEngine
from omnid.daemon.priorities import Priority
from omnid.daemon.session import Cancelled
from omnid.models.base import Backend, ChatFrame, ChatRenderer, Segment, Snapshot, TextSegment

T = TypeVar("T")


class VocabularyTable:
    """token_bytes and is_end_of_generation of one backend, memoized (they never change for loaded weights).
    Shared by every proxy; a dict read or write is atomic under the GIL, and a race only computes one twice."""

    def __init__(self) -> None:
        self.pieces: dict[int, bytes] = {}
        self.ends: dict[int, bool] = {}


class SequenceBackend(Backend):
    """Sequence `seq` of the engine's backend, driven from a job thread (see the module docstring)."""

    def __init__(self, engine: BatchEngine, seq: int, priority: Priority, cancelled: Callable[[], bool],
                 vocabulary: VocabularyTable) -> None:
        self._engine = engine
        self.seq = seq
        self.priority = priority
        self._cancelled = cancelled
        self._vocabulary = vocabulary
        self.info = engine.backend.info
        #: Whether this job changed its sequence yet (until then the scheduler may give it another: `retarget`).
        self.touched = False
        self._n = self._call(lambda b: b.n_tokens, keeps_logits=True)
        self._logits: np.ndarray | None = None

    def retarget(self, seq: int) -> None:
        """Drive sequence `seq` from now on (the scheduler moved this job before it changed anything)."""
        assert not self.touched
        self.seq = seq
        self._logits = None
        self._n = self._call(lambda b: b.n_tokens, keeps_logits=True)

    def _call(self, fn: Callable[[Backend], T], keeps_logits: bool = False) -> T:
        """fn on this sequence, on the engine's thread; the token count refreshed on the way."""
        if not keeps_logits:
            self._logits = None
            self.touched = True
        result, self._n = self._engine.call(self.seq, lambda b: (fn(b), b.n_tokens))
        return result

    def chat_frame(self) -> ChatFrame:
        return self._call(lambda b: b.chat_frame(), keeps_logits=True)

    def chat_renderer(self) -> ChatRenderer | None:
        return self._call(lambda b: b.chat_renderer(), keeps_logits=True)

    @property
    def n_tokens(self) -> int:
        return self._n

    def reset(self) -> None:
        self._call(lambda b: b.reset())

    def count_tokens(self, segment: Segment) -> int:
        return self._call(lambda b: b.count_tokens(segment), keeps_logits=True)

    def tokenize(self, segment: TextSegment) -> list[int]:
        return self._call(lambda b: b.tokenize(segment), keeps_logits=True)

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        tokens = list(tokens)
        if not tokens:
            return
        self._logits, self.touched = None, True
        logits = self._engine.append(self.seq, tokens, self.priority, should_stop)
        if logits is None:  # stopped part-way: how far it got is the backend's to say
            self._n = self._call(lambda b: b.n_tokens)
            return
        self._n += len(tokens)
        self._logits = logits

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        if isinstance(segment, TextSegment):  # text is batched like any token append
            tokens = self.tokenize(segment)
            self.append_tokens(tokens, should_stop)
            return len(tokens)
        return self._call(lambda b: b.append(segment, should_stop))

    @property
    def can_truncate(self) -> bool:
        return self._engine.backend.can_truncate

    def truncate(self, n_tokens: int) -> bool:
        return self._call(lambda b: b.truncate(n_tokens))

    def logits(self) -> np.ndarray:
        """The logits the last append returned, handed over once (the caller may change them); else asked for."""
        logits, self._logits = self._logits, None
        if logits is not None:
            return logits
        return self._call(lambda b: b.logits(), keeps_logits=True)

    def append_token(self, token: int) -> None:
        self._logits, self.touched = None, True
        logits = self._engine.append(self.seq, [token], self.priority, self._cancelled)
        if logits is None:
            raise Cancelled()
        self._n += 1
        self._logits = logits

    def token_bytes(self, token: int) -> bytes:
        piece = self._vocabulary.pieces.get(token)
        if piece is None:
            piece = self._vocabulary.pieces[token] = self._call(lambda b: b.token_bytes(token), keeps_logits=True)
        return piece

    def is_end_of_generation(self, token: int) -> bool:
        end = self._vocabulary.ends.get(token)
        if end is None:
            end = self._vocabulary.ends[token] = self._call(lambda b: b.is_end_of_generation(token),
                                                            keeps_logits=True)
        return end

    def snapshot(self) -> Snapshot:
        return self._call(lambda b: b.snapshot(), keeps_logits=True)

    def restore(self, snapshot: Snapshot) -> None:
        self._call(lambda b: b.restore(snapshot))
