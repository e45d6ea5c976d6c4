"""Constrained answers: a JSON Schema or a Lark grammar turned into a token mask at every step (llguidance).

Why llguidance: it is a maintained constrained-decoding library that works on token bytes, so one tokenizer
description built from the Backend contract (token_bytes for every id) serves llama.cpp and mlx alike, and
the daemon's own sampler stays the only place that picks tokens (the mask only sets forbidden logits to -inf).
"""
from __future__ import annotations

import json
import weakref
from typing import Mapping

import llguidance
import numpy as np

from omnid.models.base import Backend, InputError, TextSegment

#: A tokenizer description per loaded backend (building one walks the whole vocabulary).
_TOKENIZERS: "weakref.WeakKeyDictionary[Backend, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()


class GrammarError(InputError):
    """The schema or grammar cannot be compiled (INVALID_ARGUMENT)."""


def schema_grammar(schema: dict) -> str:
    """The grammar of JSON text valid for `schema` (any whitespace-free JSON layout the schema allows)."""
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                             defaults={"whitespace_flexible": False})
    except ValueError as exc:
        raise GrammarError(f"the schema cannot be used to constrain the answer: {exc}") from None


def lark_grammar(lark: str) -> str:
    """A Lark grammar (llguidance's dialect, which embeds JSON Schemas as %json {...}) in llguidance's form."""
    return llguidance.LLMatcher.grammar_from_lark(lark)


def check(grammar: str) -> None:
    """GrammarError unless llguidance accepts the grammar (schemas it does not support are refused here)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        message = messages[0] if messages else "unknown error"
        raise GrammarError(f"the schema cannot be used to constrain the answer: {message.splitlines()[0]}")


class Constraint:
    """One constrained answer: masks the logits before each token, follows the tokens sampled."""

    def __init__(self, backend: Backend, grammar: str, n_vocab: int, tags: Mapping[int, str]) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer(backend, n_vocab, tags), grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"the answer's grammar cannot be used: {self._matcher.get_error()}")
        self._n_vocab = n_vocab

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids now set to -inf."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: len(logits)].astype(bool)
        if not allowed.any():
            raise RuntimeError(f"the grammar allows no token: {self._matcher.get_error()}")
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"a masked token was refused by the grammar: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """Nothing more may follow: the answer is complete."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()


def tokenizer(backend: Backend, n_vocab: int, tags: Mapping[int, str]) -> llguidance.LLTokenizer:
    """The backend's vocabulary as llguidance sees it: each token's bytes; control tokens marked special (0xFF
    prefix), except the tags (thinking, tool calls) a grammar spells as text; end-of-generation tokens as EOS."""
    cached = _TOKENIZERS.get(backend)
    if cached is not None and cached.vocab_size == n_vocab:
        return cached
    tokens: list[bytes] = []
    eos: list[int] = []
    for i in range(n_vocab):
        if backend.is_end_of_generation(i):
            eos.append(i)
        piece = tags[i].encode() if i in tags else backend.token_bytes(i)
        tokens.append(piece if piece and i not in eos else b"\xff<omnid_special_%d>" % i)

    class _Vocab:
        eos_token_id = eos[0] if eos else 0
        bos_token_id = None
        special_token_ids = eos

        def __init__(self) -> None:
            self.tokens = tokens

        def __call__(self, text: str) -> list[int]:
            return backend.tokenize(TextSegment(text))

    made = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab()), n_vocab=n_vocab, eos_token=eos or None)
    _TOKENIZERS[backend] = made
    return made
