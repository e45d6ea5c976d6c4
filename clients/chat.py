"""Client calls for conversations (a mixin of OmniClient; self.stub and self.metadata come from CoreClient),
and `Conversation`, which keeps a history on the client side:

    with OmniClient() as omni:
        talk = omni.conversation(system="Be brief.")
        for event in talk.send(image("photo.png"), text("What is this?")):
            ...                                   # ChatEvents: progress, reasoning_delta, delta, tool_call, done
        answer = talk.ask(text("And the colors?"))  # the final ChatFinal (the history grows by both turns)

The whole history goes to the daemon every turn; its prompt cache holds the earlier turns, so only the new
message is evaluated (usage.cached_tokens says how much was reused).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Sequence

from omnid.proto import omnid_pb2 as pb


def tool(name: str, description: str = "", parameters: dict | None = None) -> pb.ToolSpec:
    """A tool the model may call; `parameters` is the JSON Schema of its arguments."""
    return pb.ToolSpec(name=name, description=description,
                       parameters_json=json.dumps(parameters) if parameters is not None else "")


class ChatClient:
    stub: Any  # the generated stub has no type hints
    metadata: tuple[tuple[str, str], ...]

    def chat(self, request: pb.ChatRequest) -> Iterator[pb.ChatEvent]:
        """The raw event stream of a Chat call."""
        return self.stub.Chat(request, metadata=self.metadata)

    def conversation(self, system: str = "", **settings: Any) -> "Conversation":
        """A new conversation (settings: see Conversation)."""
        return Conversation(self, system, **settings)


class Conversation:
    """A history kept by the client; each send() adds the message and, once answered, the assistant's turn."""

    def __init__(self, client: ChatClient, system: str = "", *, tools: Sequence[pb.ToolSpec] = (),
                 thinking: bool | None = None, thinking_budget: int | None = None, max_tokens: int = 0,
                 sampling: pb.Sampling | None = None) -> None:
        self.client = client
        self.system = system
        self.tools = list(tools)
        self.thinking = thinking
        self.thinking_budget = thinking_budget
        self.max_tokens = max_tokens
        self.sampling = sampling or pb.Sampling()
        self.messages: list[pb.ChatMessage] = []

    def clear(self) -> None:
        """Forget the history (the system text, tools and settings stay)."""
        self.messages = []

    def send(self, *parts: pb.Part, schema: dict | None = None, tool_choice: str = "") -> Iterator[pb.ChatEvent]:
        """Add a user turn of `parts` and stream the answer's events; the answer joins the history at `done`."""
        return self._turn(pb.ChatMessage(role="user", parts=list(parts)), schema, tool_choice)

    def tool_result(self, call_id: str, result: str, *, schema: dict | None = None,
                    tool_choice: str = "") -> Iterator[pb.ChatEvent]:
        """Answer a tool call (its id from a ChatFinal's tool_calls) and stream the model's next turn."""
        return self._turn(pb.ChatMessage(role="tool", parts=[pb.Part(text=result)], tool_call_id=call_id),
                          schema, tool_choice)

    def add_tool_result(self, call_id: str, result: str) -> None:
        """Answer one of several calls without asking for a turn yet (send the last one with tool_result)."""
        self.messages.append(pb.ChatMessage(role="tool", parts=[pb.Part(text=result)], tool_call_id=call_id))

    def ask(self, *parts: pb.Part, on_event: Callable[[pb.ChatEvent], None] | None = None,
            **kwargs: Any) -> pb.ChatFinal:
        """send(), drained: the final message (`on_event` sees every other event on the way, e.g. progress)."""
        done = None
        for event in self.send(*parts, **kwargs):
            if event.WhichOneof("event") == "done":
                done = event.done
            elif on_event is not None:
                on_event(event)
        if done is None:
            raise RuntimeError("the stream ended without a final message")
        return done

    def request(self, schema: dict | None = None, tool_choice: str = "") -> pb.ChatRequest:
        system = [pb.ChatMessage(role="system", parts=[pb.Part(text=self.system)])] if self.system else []
        request = pb.ChatRequest(messages=system + self.messages, tools=self.tools, tool_choice=tool_choice,
                                 response_schema_json=json.dumps(schema) if schema is not None else "",
                                 sampling=self.sampling, max_tokens=self.max_tokens)
        if self.thinking is not None:
            request.thinking = self.thinking
        if self.thinking_budget is not None:
            request.thinking_budget = self.thinking_budget
        return request

    def _turn(self, message: pb.ChatMessage, schema: dict | None, tool_choice: str) -> Iterator[pb.ChatEvent]:
        self.messages.append(message)
        answered = False
        stream: Any = self.client.chat(self.request(schema, tool_choice))  # a cancellable call
        try:
            for event in stream:
                if event.WhichOneof("event") == "done":
                    d = event.done
                    self.messages.append(pb.ChatMessage(
                        role="assistant", parts=[pb.Part(text=d.text)] if d.text else [], reasoning=d.reasoning,
                        tool_calls=list(d.tool_calls)))
                    answered = True
                yield event
        finally:
            if not answered:  # refused or cut short (the stream is cancelled): the message did not happen
                stream.cancel()
                self.messages.remove(message)
