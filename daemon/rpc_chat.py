"""The Chat RPC: a ChatRequest decoded into a Conversation (parts resolved as Generate's are), checked in the
handler's thread, answered by the conversation job, its events streamed as ChatEvents (a long history's
prefill and a wait in the queue as progress, as Generate's)."""
from __future__ import annotations

import json
from typing import Any, Iterator

import grpc

from omnid.daemon import conversation as chat
from omnid.daemon.events import (ChatDone, PrefillProgress, ReasoningDelta, TextDelta, ToolCall, ToolCallEvent,
                                 Waiting)
from omnid.daemon.rpc_base import progress_message, sampling_from, usage_message
from omnid.daemon.rpc_core import CoreRpcs
from omnid.proto import omnid_pb2 as pb


class ChatRpcs(CoreRpcs):
    def Chat(self, request: pb.ChatRequest, context: grpc.ServicerContext) -> Iterator[pb.ChatEvent]:
        conversation = self.call(context, lambda: self.conversation_from(request))
        done = yield from self.stream_job(chat.chat(conversation), context, "chat", chat_event, tell_waiting=True)
        yield chat_event(done)

    def conversation_from(self, request: pb.ChatRequest) -> chat.Conversation:
        max_tokens, sampling = self.answer_limits(request.max_tokens, sampling_from(request.sampling))
        conversation = chat.Conversation(
            messages=tuple(self._message(i, m) for i, m in enumerate(request.messages, start=1)),
            tools=tuple(chat.Tool(t.name, t.description, _json_object(t.parameters_json, f"tool {t.name!r}")
                                  if t.parameters_json else {"type": "object"}) for t in request.tools),
            tool_choice=request.tool_choice or "auto",
            response_schema=_json_object(request.response_schema_json, "the response schema")
            if request.response_schema_json else None,
            thinking=request.thinking if request.HasField("thinking") else None,
            thinking_budget=request.thinking_budget if request.HasField("thinking_budget") else None,
            max_tokens=max_tokens, sampling=sampling)
        chat.validate(conversation, self.info)
        return conversation

    def _message(self, i: int, m: pb.ChatMessage) -> chat.Message:
        if m.role == "user":
            parts = tuple(self.segments_from_parts(list(m.parts)))
        else:  # only a user turn may carry media: anything else is refused by validate, not resolved
            parts = tuple(chat.TextSegment(p.text) if p.WhichOneof("kind") == "text" else _media(i, m.role)
                          for p in m.parts)
        return chat.Message(role=m.role, parts=parts, reasoning=m.reasoning,
                            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
                            tool_call_id=m.tool_call_id)


def chat_event(event: Any) -> pb.ChatEvent:
    if isinstance(event, TextDelta):
        return pb.ChatEvent(delta=event.text)
    if isinstance(event, ReasoningDelta):
        return pb.ChatEvent(reasoning_delta=event.text)
    if isinstance(event, ToolCallEvent):
        return pb.ChatEvent(tool_call=_call(event.call))
    if isinstance(event, (PrefillProgress, Waiting)):
        return pb.ChatEvent(progress=progress_message(event))
    if isinstance(event, ChatDone):
        return pb.ChatEvent(done=pb.ChatFinal(text=event.text, reasoning=event.reasoning,
                                              tool_calls=[_call(c) for c in event.tool_calls],
                                              usage=usage_message(event.usage), stop_reason=event.stop_reason))
    raise TypeError(f"no ChatEvent for {type(event).__name__}")


def _call(call: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(id=call.id, name=call.name, arguments=call.arguments)


def _media(i: int, role: str) -> Any:
    raise chat.ConversationError(f"message {i}: only a user turn may carry media (a {role} turn is text)")


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise chat.ConversationError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise chat.ConversationError(f"{what} is not a JSON object")
    return value
