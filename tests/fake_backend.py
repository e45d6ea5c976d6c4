"""A FAKE backend, for the scheduler's, the job handle's and the generation loop's unit tests ONLY.

It is not a model: a prompt's tokens are its UTF-8 bytes, and after each appended segment it "answers" with a
scripted reply (`reply`, byte by byte, then end of generation), so a test knows exactly which text the real
DecoderSession.generate loop will see and can check stop strings, stop reasons and delta streaming
without loading anything. Everything about models is tested on the real backends (test_backend_conformance.py,
test_llama_backend.py, test_mlx_backend.py).
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

from omnid.models.base import (Backend, ChatFrame, ContextOverflow, InputError, ModelInfo, Segment, Snapshot,
                               TextSegment)

EOS = 256
N_VOCAB = 257


class FakeBackendForSchedulerTests(Backend):
    """Tokens are bytes; the next token after a segment is the next byte of `reply`, then EOS."""

    def __init__(self, reply: bytes = b"fake answer", context_length: int = 4096, batch: int = 64) -> None:
        self.reply = reply
        self.batch = batch
        self.info = ModelInfo(name="fake", path="", backend="fake-for-scheduler-tests",
                              capabilities=frozenset({"text"}), context_length=context_length,
                              fingerprint="fake0000000000000000000000000000")
        self.tokens: list[int] = []
        self._answered = 0  # reply bytes appended since the last segment
        self.closed = False

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
        out[self.reply[self._answered] if self._answered < len(self.reply) else EOS] = 10.0
        return out

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
