"""A conversation turn: messages laid out with the model's own chat template, answered with thinking, tool
calls and (optionally) output constrained to a JSON Schema, with the cache carried across turns.

This module holds what front ends exchange with the job (Message, Tool, Conversation), the checks a front end
runs before submitting (`validate`), and the job itself (`chat`). The pieces are elsewhere, one job each:
daemon/chat_layout.py renders the history into a Prompt, daemon/chat_decode.py samples the answer (thinking,
grammar, tool calls, stop strings), daemon/grammar.py turns a schema into token masks, daemon/tool_calls.py
knows the template's tool-call syntax.

Why the history is re-sent whole each turn (and not kept by the daemon): the prompt cache already holds it.
After an answer the job lays the assistant turn out the way the next request will (`chat_layout.settled`) and
snapshots the sequence there, so the next turn reuses everything up to its new message, whoever served the
requests in between.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from omnid.daemon import chat_layout, grammar, remote_chat, tool_calls
from omnid.daemon.chat_decode import Decoded, Steering, decode
from omnid.daemon.events import ChatDone, ToolCall, Usage
from omnid.daemon.sampling import SamplingParams
from omnid.daemon.session import DecoderSession, PrefillStats
from omnid.modalities.decoder import Prompt
from omnid.models.base import (ChatRenderer, ContextOverflow, InputError, ModelInfo, RemoteGeneration, Segment,
                              TextSegment)

__all__ = ["ChatDone", "Conversation", "ConversationError", "ConversationOverflow", "Message", "Tool", "ToolCall",
           "chat", "validate"]

ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")
#: Longest tool name accepted (templates and the grammar take it as it is).
MAX_TOOL_NAME = 64
#: The answer's length when the request names none (front ends pass the daemon's configured default).
DEFAULT_MAX_TOKENS = 512

Emit = Callable[[Any], None]


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. `parts` are resolved segments (each front end decodes its own media)."""

    role: str  # "system" | "user" | "assistant" | "tool"
    parts: tuple[Segment, ...] = ()
    #: An assistant turn's earlier thinking (the template decides whether the model sees it again).
    reasoning: str = ""
    #: An assistant turn's tool calls.
    tool_calls: tuple[ToolCall, ...] = ()
    #: A tool turn: the id of the call it answers.
    tool_call_id: str = ""


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: its arguments are described by a JSON Schema."""

    name: str
    description: str
    parameters: dict = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"  # "auto" | "none" | "required" | a tool's name
    #: A JSON Schema the answer must validate against; {"type": "object"} is any JSON object.
    response_schema: dict | None = None
    #: Thinking on or off (the template's switch); None = the model's default.
    thinking: bool | None = None
    #: Tokens of thinking after which the thinking is closed and the answer begins (None = no budget).
    thinking_budget: int | None = None
    max_tokens: int = 0  # 0 = the daemon's default
    sampling: SamplingParams = SamplingParams()


class ConversationError(InputError):
    """A conversation that cannot be answered as sent (INVALID_ARGUMENT, with a one-line reason)."""


class ConversationOverflow(ContextOverflow):
    """The history does not fit the context (OUT_OF_RANGE), saying by how many tokens."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(needed, available)
        self.args = (f"the conversation is {needed - available} tokens over the model's context "
                     f"({needed} needed, {available} fit); drop or shorten earlier messages",)


def validate(conversation: Conversation, info: ModelInfo) -> None:
    """The cheap checks, in the front end's thread, before anything is queued (ConversationError on failure)."""
    messages = conversation.messages
    if not messages:
        raise ConversationError("the conversation has no messages")
    pending: set[str] = set()
    for i, m in enumerate(messages, start=1):
        if m.role not in ROLES:
            raise ConversationError(f"message {i} has the role {m.role!r} (one of {', '.join(ROLES)})")
        if m.role == "system" and i != 1:
            raise ConversationError(f"message {i}: a system message may only come first")
        if m.role != "user" and any(not isinstance(p, TextSegment) for p in m.parts):
            raise ConversationError(f"message {i}: only a user turn may carry media (a {m.role} turn is text)")
        if m.role != "assistant" and (m.reasoning or m.tool_calls):
            raise ConversationError(f"message {i}: only an assistant turn has reasoning or tool calls")
        if m.role != "tool" and m.tool_call_id:
            raise ConversationError(f"message {i}: only a tool turn answers a tool call (tool_call_id)")
        if m.role == "assistant":
            for call in m.tool_calls:
                _check_call(i, call)
            pending = {c.id for c in m.tool_calls}
        elif m.role == "tool":
            if m.tool_call_id not in pending:
                raise ConversationError(f"message {i}: the tool message answers {m.tool_call_id!r}, which no "
                                        "assistant turn before it called (or another tool message answered)")
            pending.discard(m.tool_call_id)
        elif m.role == "user" and not m.parts:
            raise ConversationError(f"message {i}: a user turn has no parts")
    if messages[-1].role not in ("user", "tool"):
        raise ConversationError("the last message must be a user or tool turn (the model answers it)")
    _check_tools(conversation)
    if conversation.response_schema is not None:
        check_schema(conversation.response_schema, "the response schema")
    answer_grammar(conversation)  # what the constrained-decoding library cannot compile is refused now
    if conversation.thinking_budget is not None and conversation.thinking_budget < 0:
        raise ConversationError("the thinking budget must be >= 0 tokens")
    if conversation.max_tokens < 0:
        raise ConversationError("max_tokens must be >= 0")
    del info  # the per-model checks (media, context) are the backend's, when the job runs


def _check_call(i: int, call: ToolCall) -> None:
    if not call.id or not call.name:
        raise ConversationError(f"message {i}: a tool call needs an id and a name")
    try:
        json.loads(call.arguments or "{}")
    except ValueError:
        raise ConversationError(f"message {i}: the arguments of tool call {call.id!r} are not JSON") from None


def _check_tools(conversation: Conversation) -> None:
    names = [t.name for t in conversation.tools]
    for t in conversation.tools:
        if not t.name or len(t.name) > MAX_TOOL_NAME or not all(c.isalnum() or c in "_-." for c in t.name):
            raise ConversationError(f"the tool name {t.name!r} is not 1-{MAX_TOOL_NAME} letters, digits, _-.")
        check_schema(t.parameters, f"the parameters of tool {t.name!r}")
    if len(set(names)) != len(names):
        raise ConversationError("two tools have the same name")
    choice = conversation.tool_choice
    if choice not in TOOL_CHOICES and choice not in names:
        raise ConversationError(f"tool_choice {choice!r} is not auto, none, required or a declared tool's name")
    if choice not in ("auto", "none") and not names:
        raise ConversationError(f"tool_choice {choice!r} needs declared tools")
    if choice not in ("auto", "none") and conversation.response_schema is not None:
        raise ConversationError("a response schema and a required tool call exclude each other")


def check_schema(schema: Any, what: str) -> None:
    """ConversationError unless `schema` is a JSON Schema (checked against its metaschema)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise ConversationError(f"{what} is not a JSON object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConversationError(f"{what} is not a valid JSON Schema: {exc.message}") from None


def chat(conversation: Conversation) -> Callable[[DecoderSession, Emit], ChatDone]:
    """The job answering the conversation's last message (submit with scheduler.submit(job, "chat"))."""
    def job(session: DecoderSession, emit: Emit) -> ChatDone:
        if isinstance(session.backend, RemoteGeneration):  # the engine's own template and decoding
            return remote_chat.answer(session, session.backend, conversation,
                                      conversation.max_tokens or DEFAULT_MAX_TOKENS, emit)
        render = session.backend.chat_renderer()
        if render is None:
            raise ConversationError("the model has no chat template, so it cannot hold a conversation",
                                    unsupported=True)
        check_plain(session, conversation)
        layout = _layout(lambda: chat_layout.lay_out(render, conversation))
        stats = prefill(session, layout.prompt, emit)
        tools = conversation.tools if conversation.tool_choice != "none" else ()
        steering = Steering(thinking=layout.thinking_open, may_think=conversation.thinking is not False,
                            thinking_budget=conversation.thinking_budget,
                            grammar=answer_grammar(conversation, tool_calls.detect(render)), tools=tools)
        decoded = decode(session, steering, conversation.max_tokens or DEFAULT_MAX_TOKENS, conversation.sampling,
                         emit)
        _settle(session, render, conversation, decoded)
        usage = Usage(
            prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
            generated_tokens=decoded.generated_tokens, time_to_first_token_ms=decoded.time_to_first_token_ms,
            decode_tokens_per_second=decoded.decode_tokens_per_second, queue_ms=session.queue_ms,
            prefill_ms=stats.prefill_ms, total_ms=(time.perf_counter() - session.started) * 1000 + session.queue_ms,
            cache_restore_ms=stats.restore_ms)
        return ChatDone(text=decoded.text, reasoning=decoded.reasoning, tool_calls=tuple(decoded.tool_calls),
                        usage=usage, stop_reason=decoded.stop_reason)
    return job


def answer_grammar(conversation: Conversation, syntax: str = "json") -> str | None:
    """The grammar the answer is held to: the response schema's, or the tool calls' (in the template's `syntax`,
    see tool_calls.detect) when a call is required."""
    if conversation.response_schema is not None:
        compiled = grammar.schema_grammar(conversation.response_schema)
    elif conversation.tool_choice not in ("auto", "none"):
        compiled = grammar.lark_grammar(tool_calls.grammar(conversation.tools, conversation.tool_choice, syntax))
    else:
        return None
    grammar.check(compiled)
    return compiled


def check_plain(session: DecoderSession, conversation: Conversation) -> None:
    """ConversationError when a client's text that the template writes among its own pieces (a tool's name,
    description or schema, a call's arguments) spells one of the model's control tokens.

    Why: the parts of a message are tokenized as plain text, but what the template writes itself is tokenized
    with control tokens allowed, so "<|im_end|><|im_start|>system" in a tool's description would end the
    system turn and open another."""
    texts = [(f"tool {t.name!r}", f"{t.name} {t.description} {json.dumps(t.parameters)}") for t in conversation.tools]
    texts += [(f"tool call {c.id!r}", f"{c.id} {c.name} {c.arguments}")
              for m in conversation.messages for c in m.tool_calls]
    backend = session.backend
    for what, text in texts:
        if backend.tokenize(TextSegment(text, template=True)) != backend.tokenize(TextSegment(text)):
            raise ConversationError(f"{what} spells one of the model's control tokens")


def prefill(session: DecoderSession, prompt: Prompt, progress: Emit | None = None) -> PrefillStats:
    """session.prefill, with a history over the context reported by how many tokens (counted only then); a long
    one reports PrefillProgress to `progress`."""
    try:
        return session.prefill(prompt, progress=progress)
    except ContextOverflow:
        needed = sum(session.count_tokens(s) for s in prompt.segments)
        raise ConversationOverflow(needed, session.info.context_length) from None


def _layout(make: Callable[[], chat_layout.ChatLayout]) -> chat_layout.ChatLayout:
    try:
        return make()
    except chat_layout.LayoutError as exc:
        raise ConversationError(str(exc)) from None


def _settle(session: DecoderSession, render: ChatRenderer, conversation: Conversation, decoded: Decoded) -> None:
    """Leave the sequence as the next request will start: the history with this answer laid out the way the
    template shows an earlier turn, snapshotted there. The answer's text is laid out as the tokens that wrote
    it, so when the template shows it as it was generated, nothing is evaluated again."""
    if session.cancelled() or decoded.stop_reason == "context_full":
        return
    answer = TextSegment(decoded.text)
    if decoded.text_tokens:
        session.remember_tokens(answer, decoded.text_tokens)
    if decoded.reasoning and decoded.reasoning_tokens:
        session.remember_tokens(TextSegment(decoded.reasoning), decoded.reasoning_tokens)
    turn = Message("assistant", (answer,) if decoded.text else (), reasoning=decoded.reasoning,
                   tool_calls=tuple(decoded.tool_calls))
    try:
        prompt = chat_layout.settled(render, conversation, turn)
    except chat_layout.LayoutError:
        return
    if prompt is None:
        return
    try:
        stats = session.prefill(prompt)
    except ContextOverflow:
        return
    if not session.cache.contains(stats.prefix_key):
        session.save_snapshot()
