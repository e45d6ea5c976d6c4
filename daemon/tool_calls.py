"""The tool-call syntax of the chat templates omnid serves, both ways: reading calls out of an answer, and the
grammar that makes an answer be calls (tool_choice "required" or a tool's name).

Each call sits between `<tool_call>` and `</tool_call>`; inside, templates use one of two syntaxes, and `detect`
asks the template which (it renders a call and looks):
  json  `{"name": ..., "arguments": {...}}` (Qwen 2.5, Hermes, the test models);
  xml   `<function=NAME>` then `<parameter=KEY>`VALUE`</parameter>` each, `</function>` (Nemotron 3 Nano,
        Qwen3-Coder). Values are JSON where they parse as the parameter's type, text otherwise.
Several calls may follow each other in one answer.
"""
from __future__ import annotations

import json
import re
import secrets
from typing import TYPE_CHECKING, Any, Sequence

from omnid.daemon.events import ToolCall
from omnid.models.base import ChatRenderer

if TYPE_CHECKING:
    from omnid.daemon.conversation import Tool

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
#: Calls one constrained answer may make (tool_choice "required"); a named choice makes exactly one.
MAX_CALLS = 8
_PROBE = "omnid_probe_tool"
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def new_id() -> str:
    return "call_" + secrets.token_hex(8)


def detect(render: ChatRenderer) -> str:
    """"xml" when the template writes a call as <function=...>, else "json"."""
    call = {"id": "call_0", "type": "function", "function": {"name": _PROBE, "arguments": {"a": 1}}}
    try:
        text = render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                       {"role": "tool", "content": "y", "tool_call_id": "call_0", "name": _PROBE}], False, {})
    except Exception:  # a template that cannot render calls at all: the json syntax, which most models know
        return "json"
    return "xml" if f"<function={_PROBE}>" in text else "json"


def parse(body: str, tools: Sequence["Tool"]) -> ToolCall | None:
    """The call written between the tags (either syntax), or None when it is not a call of a declared tool."""
    by_name = {t.name: t for t in tools}
    function = _FUNCTION.search(body)
    if function is not None:
        name, arguments = function.group(1).strip(), {}
        tool = by_name.get(name)
        if tool is None:
            return None
        properties = tool.parameters.get("properties", {}) if isinstance(tool.parameters, dict) else {}
        for key, value in _PARAMETER.findall(function.group(2)):
            arguments[key.strip()] = _value(value, properties.get(key.strip(), {}))
        return ToolCall(id=new_id(), name=name, arguments=json.dumps(arguments, ensure_ascii=False))
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in by_name:
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


def _value(text: str, schema: Any) -> Any:
    """A parameter's value: its JSON where that parses (a string parameter keeps its text unless quoted)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    wants_string = isinstance(schema, dict) and schema.get("type") == "string"
    return text if wants_string and not isinstance(value, str) else value


def grammar(tools: Sequence["Tool"], choice: str, syntax: str = "json") -> str:
    """A Lark grammar (llguidance) for an answer made of tool calls: one call of `choice` when it names a tool,
    else 1..MAX_CALLS calls of any of them, each with arguments valid for that tool's schema."""
    chosen = [t for t in tools if t.name == choice] or list(tools)
    rules = []
    for i, tool in enumerate(chosen):
        rules += _xml_rules(i, tool) if syntax == "xml" else [f"call_{i}: %json {json.dumps(_json_body(tool))}"]
    body_rule = "body: " + " | ".join(f"call_{i}" for i in range(len(chosen)))
    start = "start: call" if choice in {t.name for t in tools} else f"start: call{{1,{MAX_CALLS}}}"
    call = f'call: "{TOOL_OPEN}\\n" body "\\n{TOOL_CLOSE}\\n"'
    return "\n".join([start, call, body_rule, *rules])


def _json_body(tool: "Tool") -> dict:
    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False,
            "x-guidance": {"whitespace_flexible": False}}  # no room for a random model to pad forever


def _xml_rules(i: int, tool: "Tool") -> list[str]:
    """<function=NAME> and its parameters in schema order (the required ones always, the others optional),
    each value JSON valid for the parameter's schema."""
    properties = tool.parameters.get("properties", {}) if isinstance(tool.parameters, dict) else {}
    required = set(tool.parameters.get("required", [])) if isinstance(tool.parameters, dict) else set()
    parts, rules = [], []
    for j, (key, schema) in enumerate(properties.items()):
        value = {**(schema if isinstance(schema, dict) else {}), "x-guidance": {"whitespace_flexible": False}}
        rules.append(f"param_{i}_{j}: \"<parameter={key}>\\n\" %json {json.dumps(value)} \"\\n</parameter>\\n\"")
        parts.append(f"param_{i}_{j}" + ("" if key in required else "?"))
    head = f'"<function={tool.name}>\\n"'
    return [f"call_{i}: {' '.join([head, *parts])} \"</function>\"", *rules]
