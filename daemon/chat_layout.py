"""A conversation as a Prompt, laid out by the model's own chat template, rendered per request with sentinels.

Why render per request (where a single turn uses the fixed ChatFrame): what a conversation looks like is the
template's business, and templates differ in exactly the places a conversation needs: how an assistant turn
closes, where earlier thinking goes (usually nowhere), how tool calls, tool results and declared tools are
written, what the thinking switch changes in the generation prompt. Rendering the template with a unique
sentinel in place of every part and cutting the text at the sentinels gives template pieces (which may hold
control tokens) and the parts themselves (plain text, images, sounds), in the template's order.

Cache points are the end of every part: a hybrid decoder, which cannot be cut back, resumes the next turn from
the snapshot at the end of the last message the two prompts share (a generation prompt that opens thinking is
usually NOT what the history shows of that turn, so the end of the prompt alone would not do).
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import jinja2

from omnid.modalities.decoder import Prompt
from omnid.models.base import ChatRenderer, Segment, TextSegment

if TYPE_CHECKING:
    from omnid.daemon.conversation import Conversation, Message

#: The thinking tags of the reasoning models omnid serves (Nemotron, Qwen3, DeepSeek-R1 all use these).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class LayoutError(ValueError):
    """The template cannot render this conversation (it raised, or dropped a part it must show)."""


@dataclass(frozen=True)
class ChatLayout:
    prompt: Prompt
    #: The generation prompt opens a thinking block: the model's first tokens are thinking.
    thinking_open: bool


def lay_out(render: ChatRenderer, conversation: "Conversation") -> ChatLayout:
    """The whole conversation, ending with the template's generation prompt (the assistant's opening)."""
    sentinels = _Sentinels()
    dicts = _message_dicts(sentinels, conversation.messages)
    text = _render(render, conversation, dicts, generation=True)
    prompt = sentinels.cut(text, required=_required(conversation.messages))
    found = list(sentinels.pattern.finditer(text))
    tail = text[found[-1].end():] if found else text
    return ChatLayout(prompt, tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE))


def settled(render: ChatRenderer, conversation: "Conversation", answer: "Message") -> Prompt | None:
    """The history with `answer` appended, as the next request will show it, up to the end of that turn.

    The end of the turn is where rendering the history alone and rendering it with one more message agree;
    when they do not (a template that shows the last turn's thinking but drops earlier ones), the end of the
    answer's last part. None when the template shows none of the answer.
    """
    sentinels = _Sentinels()
    messages = (*conversation.messages, answer)
    dicts = _message_dicts(sentinels, messages)
    alone = _render(render, conversation, dicts, generation=False)
    following = _render(render, conversation, [*dicts, {"role": "user", "content": "next"}], generation=False)
    if not following.startswith(alone):
        answer_ends = [m.end() for m in sentinels.pattern.finditer(following)
                       if int(m.group(1)) in sentinels.of_message(len(messages) - 1)]
        if not answer_ends:
            return None
        alone = following[: answer_ends[-1]]
    return sentinels.cut(alone, required=_required(conversation.messages))


# -- rendering ----------------------------------------------------------------------------------------------


class _Sentinels:
    """Unique words standing for the parts in one rendering (random, so no content can forge one)."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(4)
        self.pattern = re.compile(f"OMNID{self.nonce}P([0-9]+)Q")
        self.segments: list[Segment] = []
        self._by_message: dict[int, list[int]] = {}

    def word(self, message: int, segment: Segment) -> str:
        self.segments.append(segment)
        index = len(self.segments) - 1
        self._by_message.setdefault(message, []).append(index)
        return f"OMNID{self.nonce}P{index}Q"

    def of_message(self, message: int) -> list[int]:
        return self._by_message.get(message, [])

    def cut(self, text: str, required: Sequence[int]) -> Prompt:
        """Cut the rendered text at the sentinels: template pieces between the parts, a cache point after each."""
        segments: list[Segment] = []
        points: set[int] = set()
        seen: set[int] = set()
        at = 0
        for match in self.pattern.finditer(text):
            index = int(match.group(1))
            if index in seen or index >= len(self.segments):
                raise LayoutError("the chat template shows a part twice")
            seen.add(index)
            if match.start() > at:
                segments.append(TextSegment(text[at : match.start()], template=True))
            segments.append(self.segments[index])
            points.add(len(segments))
            at = match.end()
        if at < len(text):
            segments.append(TextSegment(text[at:], template=True))
        points.add(len(segments))
        missing = [m for m in required if not set(self.of_message(m)) <= seen]
        if missing:
            raise LayoutError(f"the chat template drops the content of message {missing[0] + 1}")
        return Prompt(tuple(segments), frozenset(points))


def _required(messages: Sequence["Message"]) -> list[int]:
    """Messages whose every part the template must show (an assistant turn's may be dropped or condensed)."""
    return [i for i, m in enumerate(messages) if m.role != "assistant"]


def _message_dicts(sentinels: _Sentinels, messages: Sequence["Message"]) -> list[dict]:
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    return [_message_dict(i, m, sentinels, names) for i, m in enumerate(messages)]


def _render(render: ChatRenderer, conversation: "Conversation", dicts: list[dict], *, generation: bool) -> str:
    extra: dict = {}
    if conversation.tools and conversation.tool_choice != "none":
        extra["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                             "parameters": t.parameters}}
                          for t in conversation.tools]
    if conversation.thinking is not None:
        extra["enable_thinking"] = conversation.thinking
    try:
        return render(dicts, generation, extra)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
        raise LayoutError(f"the model's chat template cannot render this conversation: {exc}") from None


def _message_dict(i: int, message: "Message", sentinels: _Sentinels, names: dict[str, str]) -> dict:
    words = "".join(sentinels.word(i, p) for p in message.parts if not (isinstance(p, TextSegment) and not p.text))
    out: dict = {"role": message.role, "content": words}
    if message.reasoning:
        out["reasoning_content"] = sentinels.word(i, TextSegment(message.reasoning))
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")}}
                             for c in message.tool_calls]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
        out["name"] = names.get(message.tool_call_id, "")
    return out
