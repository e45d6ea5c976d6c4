"""The tool-call syntax of the chat templates omnid serves, both ways: reading calls out of an answer, and the
grammar that makes an answer be calls (tool_choice "required" or a tool's name).

The syntax is the one Nemotron, Qwen and Hermes templates teach the model: each call is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, several may follow each other.
"""
from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Sequence

from omnid.daemon.events import ToolCall

if TYPE_CHECKING:
    from omnid.daemon.conversation import Tool

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
#: Calls one constrained answer may make (tool_choice "required"); a named choice makes exactly one.
MAX_CALLS = 8


def new_id() -> str:
    return "call_" + secrets.token_hex(8)


def parse(body: str, tools: Sequence["Tool"]) -> ToolCall | None:
    """The call written between the tags, or None when it is not a call of a declared tool."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if value["name"] not in {t.name for t in tools}:
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_id(), name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False))


def grammar(tools: Sequence["Tool"], choice: str) -> str:
    """A Lark grammar (llguidance) for an answer made of tool calls: one call of `choice` when it names a tool,
    else 1..MAX_CALLS calls of any of them, each with arguments valid for that tool's schema."""
    chosen = [t for t in tools if t.name == choice] or list(tools)
    rules = []
    for i, tool in enumerate(chosen):
        body = {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                "required": ["name", "arguments"], "additionalProperties": False,
                "x-guidance": {"whitespace_flexible": False}}  # no room for a random model to pad forever
        rules.append(f"call_{i}: %json {json.dumps(body)}")
    body_rule = "body: " + " | ".join(f"call_{i}" for i in range(len(chosen)))
    count = "" if choice in {t.name for t in tools} else f"{{1,{MAX_CALLS}}}"
    start = f"start: call{count}" if count else "start: call"
    call = f'call: "{TOOL_OPEN}\\n" body "\\n{TOOL_CLOSE}\\n"'
    return "\n".join([start, call, body_rule, *rules])
