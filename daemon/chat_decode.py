"""Sampling a conversation turn: thinking first (streamed apart, closed when its budget runs out), then the
answer, constrained by a grammar where the request asks for one, with tool calls read out of it.

Why a loop of its own beside DecoderSession.generate: a turn has phases (thinking, answer), tokens the daemon
forces (the closing tag when the budget runs out), a token mask (grammar.Constraint) and text that is not
answer text (tool calls). The sequence rules are the same: every token goes into the sequence through the
session, so the next turn continues from it.
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from omnid.daemon.chat_layout import THINK_CLOSE, THINK_OPEN
from omnid.daemon.events import ReasoningDelta, TextDelta, ToolCall, ToolCallEvent
from omnid.daemon.grammar import Constraint
from omnid.daemon.sampling import Sampler, SamplingParams
from omnid.daemon.session import DecoderSession, StopMatcher
from omnid.daemon.tool_calls import TOOL_CLOSE, TOOL_OPEN, parse
from omnid.models.base import Backend, TextSegment

if TYPE_CHECKING:
    from omnid.daemon.conversation import Tool

Emit = Callable[[Any], None]
#: What the daemon writes to close thinking whose budget ran out.
FORCED_CLOSE = THINK_CLOSE + "\n"


@dataclass(frozen=True)
class Steering:
    """How one turn is sampled."""

    #: The prompt opened the thinking: the first tokens are thinking.
    thinking: bool
    #: The model may open thinking itself (thinking not switched off, no grammar from the first token).
    may_think: bool
    thinking_budget: int | None
    #: The answer's grammar (a schema's, or the tool calls'), applied from the answer's first token.
    grammar: str | None
    #: Declared tools whose calls are read out of the answer (empty: the answer is all text).
    tools: tuple["Tool", ...] = ()


@dataclass
class Decoded:
    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    stop_reason: str
    generated_tokens: int
    time_to_first_token_ms: float
    decode_tokens_per_second: float
    decode_ms: float
    #: The tokens that spell `text` exactly (None when no run of generated tokens does).
    text_tokens: list[int] | None
    reasoning_tokens: list[int] | None


def decode(session: DecoderSession, steering: Steering, max_tokens: int, sampling: SamplingParams,
           emit: Emit) -> Decoded:
    backend = session.backend
    tags = tag_tokens(backend)
    sampler = Sampler(sampling)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    thinking = steering.thinking
    think = _Until(THINK_CLOSE)
    answer = _Answer(sampling.stop, steering.tools, emit)
    spelled_think, spelled_answer = _Spelled(), _Spelled()
    constraint: Constraint | None = None
    t_start = time.perf_counter()
    t_first = 0.0
    n, thought, reason = 0, 0, "max_tokens"
    while n < max_tokens:
        session.check_cancelled()
        if thinking and steering.thinking_budget is not None and thought >= steering.thinking_budget:
            _emit_reasoning(emit, think.flush(), spelled_think)
            forced = backend.tokenize(TextSegment(FORCED_CLOSE, template=True))
            if backend.n_tokens + len(forced) >= session.info.context_length:
                reason = "context_full"
                break
            for token in forced:
                session.append_generated(token)
            thinking = False
            continue
        logits = backend.logits()
        if not thinking and steering.grammar is not None:
            if constraint is None:
                constraint = Constraint(backend, steering.grammar, len(logits), tags)
            logits = constraint.mask(logits)
        token = sampler.sample(logits)
        if backend.is_end_of_generation(token):
            reason = "eos"
            break
        n += 1
        if n == 1:
            t_first = time.perf_counter()
        piece = tags.get(token) or utf8.decode(backend.token_bytes(token))
        if constraint is not None:
            constraint.accept(token)
        if thinking:
            thought += 1
            before, after = think.feed(piece)
            _emit_reasoning(emit, before, spelled_think, token)
            if after is not None:
                thinking, piece = False, after
                if after.strip():  # the answer began inside the closing token: no token spells it alone
                    spelled_answer.add(None, after)
            else:
                piece = ""
        elif steering.may_think and constraint is None and not answer.started and piece.strip() == THINK_OPEN:
            thinking, piece = True, ""
        else:
            spelled_answer.add(token, piece)  # even "" (the first bytes of a character)
        if piece and answer.feed(piece):
            reason = "stop"
            break
        if constraint is not None and constraint.finished:
            session.append_generated(token)
            reason = "eos"
            break
        if backend.n_tokens >= session.info.context_length:
            reason = "context_full"
            break
        session.append_generated(token)
    tail = utf8.decode(b"", final=True)  # an incomplete character at the end, written by the last token
    if thinking:
        spelled_think.extend_last(tail)
        _emit_reasoning(emit, think.flush() + tail, spelled_think)
    elif reason != "stop":
        spelled_answer.extend_last(tail)
        answer.feed(tail)
    answer.finish()
    t_end = time.perf_counter()
    decode_s = t_end - t_first if n > 1 else 0.0
    text, reasoning = answer.text.strip(), spelled_think.text.strip()
    if answer.calls and reason in ("eos", "stop"):
        reason = "tool_calls"
    return Decoded(text=text, reasoning=reasoning, tool_calls=answer.calls, stop_reason=reason,
                   generated_tokens=n, time_to_first_token_ms=((t_first or t_end) - session.started) * 1000,
                   decode_tokens_per_second=(n - 1) / decode_s if decode_s > 0 else 0.0,
                   decode_ms=(t_end - t_start) * 1000,
                   text_tokens=spelled_answer.spelling(text), reasoning_tokens=spelled_think.spelling(reasoning))


def tag_tokens(backend: Backend) -> dict[int, str]:
    """The thinking and tool-call tags that are one control token each (no bytes of their own): by id.

    Why: such a token decodes to b"" (control tokens have no text), so the tags would be invisible."""
    tags: dict[int, str] = {}
    for tag in (THINK_OPEN, THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE):
        ids = backend.tokenize(TextSegment(tag, template=True))
        if len(ids) == 1 and not backend.token_bytes(ids[0]):
            tags[ids[0]] = tag
    return tags


def _emit_reasoning(emit: Emit, text: str, spelled: "_Spelled", token: int | None = None) -> None:
    if token is not None:
        spelled.add(token, text)
    elif text:
        spelled.extend_last(text)
    if text:
        emit(ReasoningDelta(text))


@dataclass
class _Spelled:
    """Which tokens wrote which text, to find the tokens that spell a final (stripped) text exactly."""

    pieces: list[tuple[int | None, str]] = field(default_factory=list)

    def add(self, token: int | None, piece: str) -> None:
        self.pieces.append((token, piece))

    def extend_last(self, piece: str) -> None:
        if piece and self.pieces:
            token, last = self.pieces[-1]
            self.pieces[-1] = (token, last + piece)

    @property
    def text(self) -> str:
        return "".join(p for _, p in self.pieces)

    def spelling(self, text: str) -> list[int] | None:
        if not text:
            return None
        start = 0
        while start < len(self.pieces) and self.pieces[start][1] and not self.pieces[start][1].strip():
            start += 1
        written, tokens = "", []
        for token, piece in self.pieces[start:]:
            if token is None:
                return None
            written += piece
            tokens.append(token)
            if written == text:
                return tokens
            if not text.startswith(written):
                return None
        return None


class _Until:
    """Streams text until `tag`, holding back only what could still become it."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, str | None]:
        """(text before the tag, the text after it or None while the tag has not come)."""
        self._pending += piece
        at = self._pending.find(self._tag)
        if at >= 0:
            before, after = self._pending[:at], self._pending[at + len(self._tag):]
            self._pending = ""
            return before, after
        hold = _overlap(self._pending, self._tag)
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold:]
        return out, None

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class _Answer:
    """The answer's text: stop strings cut it, tool calls are taken out of it (ToolCallEvent each)."""

    def __init__(self, stops: Sequence[str], tools: Sequence["Tool"], emit: Emit) -> None:
        self._stops = StopMatcher(stops, self._route)
        self._tools = tools
        self._emit = emit
        self._opening = _Until(TOOL_OPEN)
        self._body: str | None = None  # the text of a call being written, None outside one
        self.text = ""
        self.calls: list[ToolCall] = []
        self.started = False

    def feed(self, piece: str) -> bool:
        """Returns True when a stop string completed."""
        self.started = self.started or bool(piece.strip())
        return self._stops.feed(piece)

    def finish(self) -> None:
        self._stops.flush()
        if self._body is not None:  # an unclosed call: it is not one
            self._out(TOOL_OPEN + self._body)
        else:
            self._out(self._opening.flush())

    def _route(self, text: str) -> None:
        if not self._tools:
            self._out(text)
            return
        while text:
            if self._body is None:
                before, after = self._opening.feed(text)
                self._out(before)
                if after is None:
                    return
                self._body, text = "", after
                continue
            self._body += text
            at = self._body.find(TOOL_CLOSE)
            if at < 0:
                return
            body, text = self._body[:at], self._body[at + len(TOOL_CLOSE):]
            self._body = None
            call = parse(body.strip(), self._tools)
            if call is None:
                self._out(TOOL_OPEN + body + TOOL_CLOSE)
            else:
                self.calls.append(call)
                self._emit(ToolCallEvent(call))

    def _out(self, text: str) -> None:
        if text:
            self.text += text
            if not (self.calls and not text.strip()):  # the whitespace between calls is no answer
                self._emit(TextDelta(text))


def _overlap(text: str, tag: str) -> int:
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
