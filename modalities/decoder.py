"""The decoder as a pipeline sees it: the small interface the document, meeting and screen pipelines are
written against, defined here so that modalities/ never imports the daemon.

The data flows one way: the daemon (scheduler, cache, session) calls into the pipelines, the pipelines
call into the backend. The daemon's DecoderSession is what implements `Decoder` (one job's exclusive use of
the model), its Scheduler is what implements `DecoderQueue`, and its PromptCache `SnapshotCache`; tests
can run a pipeline on a DecoderSession directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, TypeVar

from omnid.models.base import ModelInfo, Segment

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are picked from the logits (the daemon's Sampler does the picking)."""

    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError(f"temperature must be in [0, 10], got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class Prompt:
    """A segment chain plus the boundaries worth snapshotting (numbers of leading segments)."""

    segments: tuple[Segment, ...]
    cache_points: frozenset[int] = field(default_factory=frozenset)

    def __add__(self, other: "Prompt") -> "Prompt":
        shift = len(self.segments)
        return Prompt(self.segments + other.segments,
                      self.cache_points | {shift + p for p in other.cache_points})


class Prefilled(Protocol):
    """What a pipeline reads of a prefill (the daemon's PrefillStats)."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def prefill_ms(self) -> float: ...
    @property
    def prefix_key(self) -> str: ...


class Generated(Protocol):
    """What a pipeline reads of a generation (the daemon's GenerationResult)."""

    @property
    def text(self) -> str: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def time_to_first_token_ms(self) -> float: ...
    @property
    def decode_ms(self) -> float: ...


class SnapshotCache(Protocol):
    """The shared prompt cache, as far as a pipeline manages its own entries (thread-safe)."""

    def contains(self, key: str) -> bool: ...
    def drop(self, key: str) -> None: ...


class Decoder(Protocol):
    """One job's exclusive use of the model: lay out a prompt, prefill it through the cache, generate."""

    @property
    def info(self) -> ModelInfo: ...
    @property
    def cache(self) -> SnapshotCache: ...

    def build_prompt(self, parts: Sequence[Segment], system: str | None = None, *,
                     open_turn: bool = False) -> Prompt: ...
    def continue_prompt(self, parts: Sequence[Segment]) -> Prompt: ...
    def prefill(self, prompt: Prompt, *, save: bool = True, checkpoints: bool = True) -> Prefilled: ...
    def generate(self, max_tokens: int, sampling: SamplingParams,
                 on_delta: Callable[[str], None] = ...) -> Generated: ...
    def count_tokens(self, segment: Segment) -> int: ...


class Pending(Protocol[T_co]):
    """Work handed to the decoder: wait for what it returned (or its error), or cancel it."""

    def result(self) -> T_co: ...
    def cancel(self) -> None: ...


class DecoderQueue(Protocol):
    """Where a pipeline that runs on its own thread (the screen watcher) sends work for the decoder."""

    def submit_work(self, work: Callable[[Decoder], T], name: str) -> Pending[T]: ...


#: Runs work on the decoder and returns its result (a meeting's way to the decoder: one job per clip).
RunOnDecoder = Callable[[Callable[[Decoder], T]], T]
