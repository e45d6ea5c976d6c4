"""What a decoder job tells its submitter: typed events while it runs, a typed result when it is done.

Jobs know nothing about gRPC: they emit these plain dataclasses (on the decoder thread) and return one as
their result, and each front end turns them into its own messages (daemon/rpc_*.py into protobufs; an HTTP
front end could turn the very same events into JSON). Why here and not in the proto: a job then runs the
same whatever front end submitted it, and the decoder thread never builds a message.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, in whole characters. Consecutive deltas may arrive joined (JobHandle.events)."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's thinking (before its answer), apart from the answer's TextDelta; joined the same way."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A call of a declared tool the model made: `arguments` is JSON text that parses (and validates against the
    tool's schema when the call was constrained)."""

    id: str  # "call_<hex>", made by the daemon
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallEvent:
    """One complete tool call, sent as soon as the model closed it."""

    call: ToolCall


@dataclass(frozen=True)
class Usage:
    """What an answer cost (the proto's Usage, field for field)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    decode_tokens_per_second: float = 0.0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    total_ms: float = 0.0
    #: Of prefill_ms, the time the cache took to bring the reused prefix back.
    cache_restore_ms: float = 0.0


@dataclass(frozen=True)
class Done:
    """A whole answer: the result of every generating job (its deltas went out before it)."""

    text: str
    usage: Usage
    stop_reason: str  # "eos", "max_tokens", "stop", "context_full"


@dataclass(frozen=True)
class ChatDone:
    """A whole conversation turn: the answer, the thinking before it, and the tool calls it made."""

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    stop_reason: str  # "eos", "max_tokens", "stop", "context_full", "tool_calls"


@dataclass(frozen=True)
class PagesUsed:
    """Which pages of a document a question was answered from, and why those."""

    pages: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class Progress:
    """How far a long job is: `done` of `total` units (pages) at `stage`, with the tokens counted so far."""

    stage: str
    done: int
    total: int
    tokens: int = 0


@dataclass(frozen=True)
class Waiting:
    """The job has not started: `ahead` jobs run or wait before it, and it has waited `waited_s` seconds (the
    front end says so to a client that would otherwise wait in silence; Status says what those jobs are)."""

    ahead: int
    waited_s: float


@dataclass(frozen=True)
class PrefillProgress:
    """How far a long prefill is: `done` of the prompt's `total` tokens are in the sequence (the `cached` ones
    it started from included), `elapsed_s` after evaluation began. Sent while a client waits for its first
    token, so a question that reads 30k tokens says how long it will take instead of saying nothing."""

    done: int
    total: int
    cached: int
    elapsed_s: float

    @property
    def tokens_per_second(self) -> float:
        """The rate of the tokens evaluated so far (0 before the first chunk)."""
        return (self.done - self.cached) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        """Seconds left at that rate (0 when unknown)."""
        rate = self.tokens_per_second
        return (self.total - self.done) / rate if rate > 0 else 0.0
