"""A conversation turn answered by a remote engine (--backend remote): the messages go to the engine's
/v1/chat/completions, its own template lays them out, and its streamed answer comes back as the events of a
local turn (ReasoningDelta, TextDelta, ToolCallEvent, then ChatDone).

Why not the local path (chat_layout, chat_decode): that needs the model's logits and tokens (a grammar's masks,
the forced close of a thinking budget), which only the engine has. So what the engine must do is asked of it
in its API's own fields, in the forms it was found to take at start-up (RemoteFeatures), and what it cannot do
is refused before anything is sent (FAILED_PRECONDITION), never silently dropped: a thinking budget; a schema,
tools or the thinking switch on an engine that ignores them. Two checks after the answer catch an engine that
took a field and then did not honour it: a required tool call that did not come, and an answer that does not
validate against its schema.

The engine's prefix cache: every turn sends the history the same way (the same JSON, media encoded the same
by content digest), and a conversation's turns go to one engine (the routing key is its first message).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Callable

from omnid.daemon.events import ChatDone, ReasoningDelta, TextDelta, ToolCall, ToolCallEvent, Usage
from omnid.daemon.sampling import DEFAULT_SEED
from omnid.daemon.session import DecoderSession, StopMatcher
from omnid.daemon.tool_calls import TOOL_CLOSE, TOOL_OPEN, new_id
from omnid.models.base import (InputError, RemoteCall, RemoteChat, RemoteGeneration, RemoteListener, Segment,
                               TextSegment)

if TYPE_CHECKING:
    from omnid.daemon.conversation import Conversation, Message

Emit = Callable[[Any], None]


def answer(session: DecoderSession, backend: RemoteGeneration, conversation: "Conversation",
           max_tokens: int, emit: Emit) -> ChatDone:
    """The conversation job's body over a remote engine: checks, the request, the streamed answer's events."""
    check_supported(backend, conversation)
    check_room(session, conversation)
    session.check_cancelled()
    messages = tuple(message(backend, m) for m in conversation.messages)
    sampling = conversation.sampling
    request = RemoteChat(
        messages=messages, max_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, seed=sampling.seed or DEFAULT_SEED,
        tools=tuple({"type": "function", "function": {"name": t.name, "description": t.description,
                                                      "parameters": t.parameters}} for t in conversation.tools),
        tool_choice=conversation.tool_choice, response_schema=conversation.response_schema,
        thinking=conversation.thinking, affinity=_affinity(messages[0]))
    turn = _Turn(conversation, emit)
    t_start = time.perf_counter()
    result = backend.chat(request, RemoteListener(text=turn.text, should_stop=session.cancelled,
                                                  reasoning=turn.reasoning, call=turn.call))
    session.check_cancelled()
    if result.stop_reason != "stop":
        turn.stops.flush()
    stop_reason = "tool_calls" if turn.calls and result.stop_reason in ("eos", "stop") else result.stop_reason
    text = turn.stops.text.strip()
    _check_honoured(conversation, text, turn.calls, stop_reason)
    t_end = time.perf_counter()
    n = result.generated_tokens
    decode_s = t_end - turn.t_first if n > 1 and turn.t_first else 0.0
    usage = Usage(prompt_tokens=result.prompt_tokens or 0, cached_tokens=result.cached_tokens or 0,
                  generated_tokens=n, time_to_first_token_ms=((turn.t_first or t_end) - session.started) * 1000,
                  decode_tokens_per_second=(n - 1) / decode_s if decode_s > 0 else 0.0, queue_ms=session.queue_ms,
                  prefill_ms=((turn.t_first or t_end) - t_start) * 1000,
                  total_ms=(t_end - session.started) * 1000 + session.queue_ms)
    return ChatDone(text=text, reasoning="".join(turn.thought).strip(), tool_calls=tuple(turn.calls), usage=usage,
                    stop_reason=stop_reason)


def check_supported(backend: RemoteGeneration, conversation: "Conversation") -> None:
    """InputError (unsupported: FAILED_PRECONDITION) for what this engine would not honour."""
    features = backend.features
    where = "the remote engine"
    if conversation.thinking_budget is not None:
        raise InputError(f"a thinking budget is not supported through --backend remote ({where} ends its own "
                         "thinking); leave it unset", unsupported=True)
    if conversation.response_schema is not None and not features.schema_format:
        raise InputError(f"{where} does not hold answers to a JSON schema (response_format was ignored when probed "
                         "at start-up)", unsupported=True)
    if conversation.tools and conversation.tool_choice != "none" and not features.tools:
        raise InputError(f"{where} does not answer with tool calls (a forced call was ignored when probed at "
                         "start-up)", unsupported=True)
    if conversation.thinking is not None and not features.thinking_switch:
        raise InputError(f"{where} has no thinking switch (chat_template_kwargs.enable_thinking changed nothing "
                         "when probed at start-up); leave thinking unset", unsupported=True)


def check_room(session: DecoderSession, conversation: "Conversation") -> None:
    """A history over the context is refused before it is sent (OUT_OF_RANGE, by how many tokens): streamed,
    some engines (llama-cpp-python's) only drop the connection for it. A text has at most as many tokens as
    bytes, so only a history with more bytes than the context holds tokens is counted (on the engine's
    tokenizer, remembered by digest): a short turn costs no round trip."""
    from omnid.daemon.conversation import ConversationOverflow

    parts = [p for m in conversation.messages for p in m.parts]
    media = sum(session.count_tokens(p) for p in parts if not isinstance(p, TextSegment))
    size = media + sum(len(p.text.encode("utf-8")) for p in parts if isinstance(p, TextSegment))
    context = session.info.context_length
    if size < context:
        return
    needed = media + sum(session.count_tokens(p) for p in parts if isinstance(p, TextSegment))
    if needed > context:
        raise ConversationOverflow(needed, context)


def message(backend: RemoteGeneration, m: "Message") -> dict:
    """One message as OpenAI writes it: text as a plain string where that is all, media as data URI parts."""
    out: dict[str, Any] = {"role": m.role, "content": _content(backend, m.parts)}
    if m.role == "assistant":
        if m.reasoning:
            out["reasoning_content"] = m.reasoning
        if m.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name,
                                                                               "arguments": c.arguments}}
                                 for c in m.tool_calls]  # content stays "": not every engine takes null
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


def _content(backend: RemoteGeneration, parts: tuple[Segment, ...]) -> str | list[dict]:
    content: list[dict] = []
    for part in parts:
        if isinstance(part, TextSegment):
            if content and content[-1]["type"] == "text":
                content[-1] = {"type": "text", "text": content[-1]["text"] + part.text}
            else:
                content.append({"type": "text", "text": part.text})
        else:
            content.append(backend.encoded(part))
    if not content:
        return ""
    if len(content) == 1 and content[0]["type"] == "text":
        return str(content[0]["text"])
    return content


def _affinity(first: dict) -> str:
    """The conversation's routing key: its first message (a system text, or the opening question)."""
    raw = json.dumps(first, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(raw, digest_size=16, person=b"omnid-rchat").hexdigest()


class _Turn:
    """The streamed answer turned into events: text through the stop strings, thinking, checked tool calls."""

    def __init__(self, conversation: "Conversation", emit: Emit) -> None:
        self._emit = emit
        self._tools = {t.name for t in conversation.tools}
        self.stops = StopMatcher(conversation.sampling.stop, lambda piece: emit(TextDelta(piece)))
        self.thought: list[str] = []
        self.calls: list[ToolCall] = []
        self.t_first = 0.0

    def _first(self) -> None:
        self.t_first = self.t_first or time.perf_counter()

    def text(self, piece: str) -> bool:
        self._first()
        return self.stops.feed(piece)

    def reasoning(self, piece: str) -> None:
        self._first()
        self.thought.append(piece)
        self._emit(ReasoningDelta(piece))

    def call(self, call: RemoteCall) -> None:
        """A declared tool with JSON arguments is a call; anything else is answer text, as a local decoder
        leaves a call it cannot read."""
        self._first()
        try:
            json.loads(call.arguments)
        except ValueError:
            parsed = False
        else:
            parsed = call.name in self._tools
        if not parsed:
            self.stops.feed(TOOL_OPEN + json.dumps({"name": call.name, "arguments": call.arguments}) + TOOL_CLOSE)
            return
        made = ToolCall(call.id or new_id(), call.name, call.arguments)
        self.calls.append(made)
        self._emit(ToolCallEvent(made))


def _check_honoured(conversation: "Conversation", text: str, calls: list[ToolCall], stop_reason: str) -> None:
    """InputError (unsupported) when the engine took a field and did not honour it."""
    if conversation.tools and conversation.tool_choice not in ("auto", "none") and not calls \
            and (text or stop_reason != "max_tokens"):  # a forced call leaves no text beside it
        raise InputError(f"the remote engine answered without the tool call tool_choice "
                         f"{conversation.tool_choice!r} requires (it does not honour that choice)", unsupported=True)
    if conversation.response_schema is not None and stop_reason == "eos":
        import jsonschema
        try:
            jsonschema.validate(json.loads(text), conversation.response_schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            why = exc.message if isinstance(exc, jsonschema.ValidationError) else "not JSON"
            raise InputError(f"the remote engine's answer does not validate against the response schema "
                             f"({why[:160]}): it took response_format but did not hold the answer to all of it",
                             unsupported=True) from None
