"""What a decoder sequence holds, as one comparable code per unit: a text token, or a whole image or sound.

Why codes and not segments: two requests that send the same 9,000-token text with a different last sentence
share 8,990 tokens but no whole segment. Comparing token ids finds that. Media cannot be compared by token
ids (their placeholder ids say nothing about the pixels), so an image or a sound is ONE unit whose code comes
from its content digest; it is never cut, and it stands for as many decoder tokens as its encoder made
(`media`, known once it was evaluated).

Keys: the key of a chain's first k units is a hash over the model fingerprint and those codes, so a snapshot
or checkpoint is found by whoever reaches the same prefix, whichever request made it. `ANCHOR` units apart,
a chain also has anchor keys: the cache indexes every entry under the anchors it passes, so the entry sharing
the longest prefix with a new prompt is found without hashing every prefix.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import xxhash

#: Units between anchor keys (see the module docstring).
ANCHOR = 256


def media_code(digest: str) -> int:
    """A media segment's unit code: negative (text tokens are >= 0), 63 bits of its content digest."""
    return -1 - (int(digest[:16], 16) >> 1)


@dataclass(frozen=True, eq=False)
class TokenChain:
    """Codes of a sequence's units, and the token count of every media unit in it (unit index, tokens)."""

    codes: np.ndarray  # int64, one per unit
    media: tuple[tuple[int, int], ...] = ()

    @staticmethod
    def empty() -> "TokenChain":
        return TokenChain(np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def n_tokens(self) -> int:
        """Decoder tokens the whole chain stands for."""
        return self.tokens_at(len(self.codes))

    def tokens_at(self, k: int) -> int:
        """Decoder tokens of the first k units."""
        return k + sum(n - 1 for at, n in self.media if at < k)

    def prefix(self, k: int) -> "TokenChain":
        return TokenChain(self.codes[:k], tuple(m for m in self.media if m[0] < k))

    def extend(self, codes: np.ndarray | list[int], media: tuple[tuple[int, int], ...] = ()) -> "TokenChain":
        """This chain followed by more units (media indices relative to the start of `codes`)."""
        shift = len(self.codes)
        more = np.asarray(codes, np.int64)
        return TokenChain(np.concatenate([self.codes, more]) if len(more) else self.codes,
                          self.media + tuple((shift + at, n) for at, n in media))

    def nbytes(self) -> int:
        return self.codes.nbytes + 16 * len(self.media)

    def common_prefix(self, other: "TokenChain") -> int:
        """Units both chains start with (media compare by content)."""
        n = min(len(self.codes), len(other.codes))
        differ = np.flatnonzero(self.codes[:n] != other.codes[:n])
        return int(differ[0]) if differ.size else n


class ChainHasher:
    """Prefix keys and anchor keys of one chain, hashing each code once however many keys are asked for."""

    def __init__(self, root: str, codes: np.ndarray) -> None:
        self._codes = np.ascontiguousarray(codes, np.int64)
        h = xxhash.xxh3_128(root.encode())
        #: Hash state after 0, ANCHOR, 2*ANCHOR... units.
        self._states = [h.copy()]
        for start in range(0, len(self._codes) - ANCHOR + 1, ANCHOR):
            h.update(self._codes[start:start + ANCHOR].tobytes())
            self._states.append(h.copy())

    def anchors(self, within: int | None = None) -> list[str]:
        """anchors()[j] is the key of the first j * ANCHOR units; `within`: only those of the first `within` units
        (the anchors an entry of that length passes)."""
        states = self._states if within is None else self._states[: within // ANCHOR + 1]
        return [s.hexdigest() for s in states]

    def key(self, k: int) -> str:
        """The key of the first k units."""
        j = min(k // ANCHOR, len(self._states) - 1)
        h = self._states[j].copy()
        h.update(self._codes[j * ANCHOR:k].tobytes())
        return h.hexdigest()


class TokenizerCache:
    """Token ids of recently seen text segments, by content digest, bounded in tokens.

    Why: a prompt is compared token by token, so every text segment is tokenized on every request; the long
    ones (a document's pages, a system prompt, a history) come back again and again, and tokenizing 16k
    tokens of text would cost a 16k-token cache hit several milliseconds.

    Thread-safe: with parallel sequences every job thread lays its prompts out through the one cache (the
    tokenizing itself runs outside the lock, so no thread waits for another's tokenizer).
    """

    def __init__(self, max_tokens: int = 1 << 20) -> None:
        self.max_tokens = max_tokens
        self._ids: OrderedDict[str, np.ndarray] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, digest: str, tokenize: Callable[[], Sequence[int]]) -> np.ndarray:
        with self._lock:
            ids = self._ids.get(digest)
            if ids is not None:
                self._ids.move_to_end(digest)
                return ids
        return self.put(digest, tokenize())

    def put(self, digest: str, tokens: Sequence[int]) -> np.ndarray:
        """Store the token ids of a segment (replacing what was there)."""
        ids = np.asarray(tokens, np.int64)
        ids.setflags(write=False)
        with self._lock:
            old = self._ids.pop(digest, None)
            self._total += len(ids) - (0 if old is None else len(old))
            self._ids[digest] = ids
            while self._total > self.max_tokens and len(self._ids) > 1:
                self._total -= len(self._ids.popitem(last=False)[1])
        return ids


class LiveSequence:
    """What one backend sequence holds between jobs, as a chain: the scheduler owns one per sequence so it
    outlives a job, and the next job on that sequence can continue from it or cut it back instead of restoring
    anything. Not locked: only the job holding the sequence uses it (the scheduler hands sequences out)."""

    def __init__(self) -> None:
        self._chain = TokenChain.empty()
        self._generated: list[int] = []

    @property
    def chain(self) -> TokenChain:
        if self._generated:
            self._chain = self._chain.extend(self._generated)
            self._generated = []
        return self._chain

    def set(self, chain: TokenChain) -> None:
        self._chain, self._generated = chain, []

    def append_token(self, token: int) -> None:
        """A sampled token went into the sequence (cheap: generation calls this once per token)."""
        self._generated.append(token)

    def clear(self) -> None:
        self.set(TokenChain.empty())
