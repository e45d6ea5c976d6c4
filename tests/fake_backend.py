"""A FAKE backend, for the scheduler's, the job handle's and the generation loop's unit tests ONLY.

It is not a model: a prompt's tokens are its UTF-8 bytes, and after each appended segment it "answers" with a
scripted reply (`reply`, byte by byte, then end of generation), so a test knows exactly which text the real
DecoderSession.generate loop will see and can check stop strings, stop reasons and delta streaming
without loading anything. With `n_sequences` > 1 it holds that many such sequences (select, decode_batch,
copy_sequence as in models/base.py) and records every decode_batch (`batches`), for the batching engine's
tests. Everything about models is tested on the real backends (test_backend_conformance.py,
test_llama_backend.py, test_mlx_backend.py).
"""
from __future__ import annotations

import json
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from omnid.models.base import (Backend, ChatFrame, ContextOverflow, InputError, ModelInfo, Segment, Snapshot,
                               TextSegment)

EOS = 256
N_VOCAB = 257


class FakeBackendForSchedulerTests(Backend):
    """Tokens are bytes; the next token after a segment is the next byte of `reply`, then EOS."""

    def __init__(self, reply: bytes = b"fake answer", context_length: int = 4096, batch: int = 64,
                 n_sequences: int = 1, batch_capacity: int = 512) -> None:
        self.reply = reply
        self.batch = batch
        self.info = ModelInfo(name="fake", path="", backend="fake-for-scheduler-tests",
                              capabilities=frozenset({"text"}), context_length=context_length,
                              fingerprint="fake0000000000000000000000000000")
        #: Each sequence's tokens and reply bytes appended since its last segment; `tokens` is the selected one's.
        self._seqs: list[tuple[list[int], int]] = [([], 0) for _ in range(n_sequences)]
        self._selected = 0
        self.tokens: list[int] = []
        self._answered = 0  # reply bytes appended since the last segment
        self._capacity = batch_capacity
        #: Every decode_batch: {sequence: token count}.
        self.batches: list[dict[int, int]] = []
        #: Called with each decode_batch's work before it is evaluated (a test's hook); may raise.
        self.on_batch: Callable[[Mapping[int, Sequence[int]]], None] | None = None
        self.closed = False

    @property
    def n_sequences(self) -> int:
        return len(self._seqs)

    def select(self, seq: int) -> None:
        if not 0 <= seq < len(self._seqs):
            raise ValueError(f"no sequence {seq}")
        self._seqs[self._selected] = (self.tokens, self._answered)
        self._selected = seq
        self.tokens, self._answered = self._seqs[seq]

    @property
    def batch_capacity(self) -> int:
        return self._capacity

    def decode_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        if sum(len(t) for t in work.values()) > self._capacity:
            raise ValueError(f"more than {self._capacity} tokens in one batch")
        for seq, tokens in work.items():  # everything is checked before anything is evaluated
            self.select(seq)
            if len(self.tokens) + len(tokens) > self.info.context_length:
                raise ContextOverflow(len(self.tokens) + len(tokens), self.info.context_length)
        if self.on_batch is not None:
            self.on_batch(work)
        # A real backend's decode runs outside the GIL (llama.cpp's ctypes calls release it): without this yield
        # a job thread that leads its own steps would keep the GIL for the whole 5 ms switch interval, and the
        # other job threads would only move at that pace.
        time.sleep(0)
        self.batches.append({seq: len(tokens) for seq, tokens in work.items()})
        out = {}
        for seq, tokens in work.items():
            self.select(seq)
            if len(tokens) == 1 and self.tokens and tokens[0] == self._predicted():  # the answer goes on
                self.append_token(tokens[0])
            else:
                self.append_tokens(tokens)
            out[seq] = self.logits()
        return out

    def chat_frame(self) -> ChatFrame:
        return ChatFrame(head="", system_open="<sys>", system_close="</sys>", user_open="<user>",
                         user_close="</user><bot>", assistant_close="</bot>", template_digest="fake")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def reset(self) -> None:
        self.tokens, self._answered = [], 0

    def count_tokens(self, segment: Segment) -> int:
        return len(self._bytes(segment))

    def tokenize(self, segment: TextSegment) -> list[int]:
        return list(self._bytes(segment))

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        data = self._bytes(segment)
        self.append_tokens(list(data), should_stop)
        return len(data)

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        if len(self.tokens) + len(tokens) > self.info.context_length:
            raise ContextOverflow(len(self.tokens) + len(tokens), self.info.context_length)
        for start in range(0, len(tokens), self.batch):
            if start and should_stop is not None and should_stop():
                return
            self.tokens += list(tokens[start:start + self.batch])
        self._answered = 0

    def logits(self) -> np.ndarray:
        if not self.tokens:
            raise RuntimeError("no next-token logits: the sequence is empty")
        out = np.zeros(N_VOCAB, np.float32)
        out[self._predicted()] = 10.0
        return out

    def _predicted(self) -> int:
        """The token the logits point to. decode_batch takes one such token as a step of the answer, any other
        tokens as a new segment (a batch does not say which it is; the scripted reply does)."""
        return self.reply[self._answered] if self._answered < len(self.reply) else EOS

    def append_token(self, token: int) -> None:
        if len(self.tokens) + 1 > self.info.context_length:
            raise ContextOverflow(len(self.tokens) + 1, self.info.context_length)
        self.tokens.append(token)
        self._answered += 1

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOS

    def snapshot(self) -> Snapshot:
        return Snapshot(len(self.tokens), json.dumps([self.tokens, self._answered]).encode(), checked=True)

    def restore(self, snapshot: Snapshot) -> None:
        self.tokens, self._answered = json.loads(bytes(snapshot.payload))

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _bytes(segment: Segment) -> bytes:
        if not isinstance(segment, TextSegment):
            raise InputError(f"the fake backend has no {segment.kind} encoder", unsupported=True)
        return segment.text.encode("utf-8")
