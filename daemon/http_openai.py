"""OpenAI's request and response bodies, converted to and from the daemon's own types, and nothing else.

Requests become what the gRPC layer submits too (a conversation.Conversation, or on a base model segments and
a system text; max_tokens, SamplingParams); a job's events and result become OpenAI's JSON objects and stream
chunks. Media go through daemon/inputs.py like a
gRPC part's, so an image or a sound is decoded and checked the same way whichever protocol carried it.

Only what omnid can honour is accepted: an option that would change the answer and that omnid cannot apply
(n > 1, logprobs, an image URL to fetch) is refused with a 400 that names it, never silently ignored; options
that only tune a hosted service (user, store, metadata, service_tier...) are ignored.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from omnid.daemon import inputs
from omnid.daemon.conversation import Conversation, Message, Tool
from omnid.daemon.events import ChatDone, Done, ToolCall, Usage
from omnid.daemon.sampling import SamplingParams
from omnid.models.base import InputError, ModelInfo, Segment, TextSegment

#: The audio formats of an `input_audio` part (OpenAI names them; the bytes are sniffed, not trusted).
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
#: OpenAI's finish_reason for each of the daemon's stop reasons.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "max_tokens": "length", "context_full": "length",
                  "tool_calls": "tool_calls"}
#: OpenAI allows this many stop strings.
MAX_STOPS = 4


@dataclass(frozen=True)
class Answering:
    """What every generating request shares: its length, sampling and how the reply is sent."""

    model: str
    max_tokens: int
    sampling: SamplingParams
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as the conversation API takes it (max_tokens and sampling are filled in later)."""

    answering: Answering
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"
    response_schema: dict | None = None
    thinking: bool | None = None

    @property
    def needs_conversation(self) -> str:
        """What in the request only the conversation API can do ("" when nothing does)."""
        if self.tools:
            return "tools"
        if self.response_schema is not None:
            return "response_format"
        if self.thinking is not None:
            return "reasoning"
        if any(m.role not in ("system", "user") for m in self.messages) or \
                sum(m.role == "user" for m in self.messages) != 1:
            return "a multi-turn conversation"
        return ""

    def conversation(self, max_tokens: int, sampling: SamplingParams) -> Conversation:
        return Conversation(messages=_leading_system_joined(self.messages), tools=self.tools,
                            tool_choice=self.tool_choice, response_schema=self.response_schema,
                            thinking=self.thinking, max_tokens=max_tokens, sampling=sampling)


@dataclass(frozen=True)
class CompletionRequest:
    answering: Answering
    prompt: str


# -- requests ------------------------------------------------------------------------------------------------


def chat_request(body: Any, info: ModelInfo) -> ChatRequest:
    """A /v1/chat/completions body, checked, its media decoded (InputError -> 400)."""
    body = _object(body, "the request body")
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty list of messages")
    parsed = tuple(_message(m, i, info) for i, m in enumerate(messages))
    max_tokens = _optional_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens")
    tools = _tools(body.get("tools"))
    return ChatRequest(_answering(body, max_tokens), parsed, tools=tools,
                       tool_choice=_tool_choice(body.get("tool_choice"), bool(tools)),
                       response_schema=_response_schema(body.get("response_format")), thinking=_thinking(body))


def has_media(body: Any) -> bool:
    """Whether a chat body holds any part but text (what takes time to decode)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(not isinstance(p, dict) or p.get("type") != "text" for p in m["content"]) for m in messages)


def completion_request(body: Any) -> CompletionRequest:
    """A /v1/completions body: one plain-text prompt that the model continues."""
    body = _object(body, "the request body")
    _refuse_unsupported(body)
    if body.get("echo"):
        raise InputError("'echo' is not supported")
    if body.get("suffix"):
        raise InputError("'suffix' (fill in the middle) is not supported")
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise InputError("'prompt' must be one string (batches of prompts are not supported)")
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InputError("'prompt' must be a non-empty string")
    return CompletionRequest(_answering(body, _optional_int(body, "max_tokens")), prompt)


def single_turn(chat: ChatRequest) -> tuple[str | None, list[Segment]]:
    """A chat of system messages and one user turn as (system text, the turn's parts): what jobs.generate
    answers on a model without a chat template (a base model), which cannot hold a conversation."""
    needs = chat.needs_conversation
    if needs:
        raise InputError(f"{needs} needs a model with a chat template; this one only continues text (a base "
                         "model): send one user message", unsupported=True)
    system = [_text(m) for m in chat.messages if m.role == "system"]
    user = next(m for m in chat.messages if m.role == "user")
    return ("\n\n".join(system) or None), list(user.parts)


def _leading_system_joined(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """OpenAI lets a chat open with several system (developer) messages; a template has one system turn."""
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    if lead <= 1:
        return messages
    joined = Message("system", (TextSegment("\n\n".join(_text(m) for m in messages[:lead])),))
    return (joined, *messages[lead:])


def _text(message: Message) -> str:
    return "".join(p.text for p in message.parts if isinstance(p, TextSegment))


def _tools(tools: Any) -> tuple[Tool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise InputError("'tools' must be a list")
    out = []
    for i, tool in enumerate(tools):
        tool = _object(tool, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise InputError(f"tools[{i}].type must be 'function', got {tool.get('type')!r}")
        function = _object(tool.get("function"), f"tools[{i}].function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"tools[{i}].function.name must be a non-empty string")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        out.append(Tool(name=name, description=str(function.get("description") or ""),
                        parameters=_object(parameters, f"tools[{i}].function.parameters")))
    return tuple(out)


def _tool_choice(choice: Any, has_tools: bool) -> str:
    """OpenAI's tool_choice ("auto", "none", "required", or {"type": "function", "function": {"name"}})."""
    if choice is None:
        return "auto" if has_tools else "none"
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InputError(f"tool_choice must be auto, none, required or a function, got {choice!r}")
        return choice
    function = _object(_object(choice, "'tool_choice'").get("function"), "tool_choice.function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("tool_choice.function.name must be a tool's name")
    return name


def _response_schema(response_format: Any) -> dict | None:
    """{"type": "text"} (none), {"type": "json_object"} (any object) or {"type": "json_schema", "json_schema":
    {"schema": ...}}: the schema the answer is held to."""
    if response_format is None:
        return None
    kind = _object(response_format, "'response_format'").get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = _object(response_format.get("json_schema"), "response_format.json_schema")
        return _object(spec.get("schema", {"type": "object"}), "response_format.json_schema.schema")
    raise InputError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")


#: reasoning_effort values that turn thinking off (the others turn it on: omnid has no effort levels).
_NO_EFFORT = ("none", "minimal")


def _thinking(body: dict[str, Any]) -> bool | None:
    """Reasoning on or off: `reasoning_effort` (OpenAI), or chat_template_kwargs.enable_thinking (the convention
    llama-server and vLLM accept); neither = the model's default."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        enable = _object(kwargs, "'chat_template_kwargs'").get("enable_thinking")
        if enable is not None:
            if not isinstance(enable, bool):
                raise InputError("chat_template_kwargs.enable_thinking must be true or false")
            return enable
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in (*_NO_EFFORT, "low", "medium", "high"):
        raise InputError(f"reasoning_effort must be none, minimal, low, medium or high, got {effort!r}")
    return effort not in _NO_EFFORT


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("n", 1) != 1:
        raise InputError("'n' must be 1: omnid answers with one choice")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InputError("'logprobs' is not supported")
    if body.get("best_of", 1) != 1:
        raise InputError("'best_of' must be 1")


def _answering(body: dict[str, Any], max_tokens: int | None) -> Answering:
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    stream = _optional_bool(body, "stream") or False
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        options = _object(options, "'stream_options'")
        include_usage = bool(options.get("include_usage", False))
    return Answering(model=str(body.get("model") or ""), max_tokens=max_tokens or 0, sampling=_sampling(body),
                     stream=stream, include_usage=include_usage)


def _sampling(body: dict[str, Any]) -> SamplingParams:
    """temperature, top_p, seed, stop (and top_k, as llama-server and vLLM take it); unset = the daemon's
    defaults (greedy: the same request gives the same answer)."""
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOPS:
            raise InputError(f"'stop' takes at most {MAX_STOPS} strings, got {len(stop)}")
        stops = tuple(stop)
    else:
        raise InputError("'stop' must be a string or a list of strings")
    seed = _optional_int(body, "seed") or 0
    if seed < 0:
        raise InputError(f"'seed' must be >= 0, got {seed}")
    return SamplingParams(temperature=_optional_number(body, "temperature") or 0.0,
                          top_p=_optional_number(body, "top_p") or 0.0, top_k=_optional_int(body, "top_k") or 0,
                          seed=seed, stop=tuple(s for s in stops if s))


def _message(message: Any, index: int, info: ModelInfo) -> Message:
    where = f"messages[{index}]"
    message = _object(message, where)
    role = message.get("role")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise InputError(f"{where}.role must be system, developer, user, assistant or tool, got {role!r}")
    parts = tuple(_content(message.get("content"), where, info))
    if role == "assistant":
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        if not isinstance(reasoning, str):
            raise InputError(f"{where}.reasoning_content must be a string")
        return Message(role, parts, reasoning=reasoning, tool_calls=_calls(message.get("tool_calls"), where))
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InputError(f"{where}.tool_call_id must name the tool call this message answers")
        return Message(role, parts, tool_call_id=call_id)
    return Message(role, parts)


def _calls(calls: Any, where: str) -> tuple[ToolCall, ...]:
    if calls is None:
        return ()
    if not isinstance(calls, list):
        raise InputError(f"{where}.tool_calls must be a list")
    out = []
    for i, call in enumerate(calls):
        call = _object(call, f"{where}.tool_calls[{i}]")
        function = _object(call.get("function"), f"{where}.tool_calls[{i}].function")
        arguments = function.get("arguments") or "{}"
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        out.append(ToolCall(id=str(call.get("id") or ""), name=str(function.get("name") or ""),
                            arguments=arguments))
    return tuple(out)


def _content(content: Any, where: str, info: ModelInfo) -> list[Segment]:
    if content is None:
        return []
    if isinstance(content, str):
        return [inputs.text(info, content)]
    if not isinstance(content, list):
        raise InputError(f"{where}.content must be a string or a list of parts")
    segments: list[Segment] = []
    for i, part in enumerate(content):
        segments += _part(_object(part, f"{where}.content[{i}]"), f"{where}.content[{i}]", info)
    return segments


def _part(part: dict[str, Any], where: str, info: ModelInfo) -> list[Segment]:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where}.text must be a string")
        return [inputs.text(info, text)]
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InputError(f"{where}.image_url.url must be a string")
        return [inputs.image(info, _data_uri(url, where))]
    if kind == "input_audio":
        audio = _object(part.get("input_audio"), f"{where}.input_audio")
        fmt = audio.get("format")
        if fmt not in AUDIO_FORMATS:
            raise InputError(f"{where}.input_audio.format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}")
        return inputs.encoded_audio(info, _base64(audio.get("data"), f"{where}.input_audio.data"))
    raise InputError(f"{where}.type {kind!r} is not supported (text, image_url, input_audio)")


def _data_uri(url: str, where: str) -> bytes:
    """The bytes of a data: URI (RFC 2397, base64). Web URLs are refused: the daemon never reaches the network."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        raise InputError(f"{where}: image URLs are not fetched (omnid never reaches the network); "
                         "send the image inline as a data: URI (data:image/png;base64,...)")
    if scheme != "data":
        raise InputError(f"{where}: an image must be a data: URI (data:image/png;base64,...)")
    header, comma, data = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise InputError(f"{where}: the data: URI must be base64 (data:image/png;base64,...)")
    return _base64(data, where)


def _base64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise InputError(f"{where} must be a non-empty base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where} is not valid base64") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"'{name}' must be an integer, got {value!r}")
    return value


def _optional_number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"'{name}' must be a number, got {value!r}")
    return float(value)


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InputError(f"'{name}' must be true or false, got {value!r}")
    return value


# -- responses -----------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """The identity every object and chunk of one reply carries."""

    object: str                      # "chat.completion" or "text_completion"
    model: str
    id: str = ""
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "chatcmpl" if self.object == "chat.completion" else "cmpl"
            self.id = f"{prefix}-{secrets.token_hex(12)}"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.object == "chat.completion" else "text_completion"

    def head(self, chunk: bool = False) -> dict[str, Any]:
        return {"id": self.id, "object": self.chunk_object if chunk else self.object, "created": self.created,
                "model": self.model}


def usage(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def timings(u: Usage) -> dict[str, float]:
    """What the answer took, in the daemon's own measures (like llama-server's "timings"; not OpenAI's)."""
    return {"queue_ms": u.queue_ms, "prefill_ms": u.prefill_ms, "time_to_first_token_ms": u.time_to_first_token_ms,
            "decode_tokens_per_second": u.decode_tokens_per_second, "total_ms": u.total_ms}


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A call as OpenAI writes it (in a stream chunk, with its index among the answer's calls)."""
    written = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return written if index is None else {"index": index, **written}


def chat_completion(reply: Reply, done: Done | ChatDone) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    if isinstance(done, ChatDone):
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        if done.tool_calls:
            message["tool_calls"] = [tool_call(c) for c in done.tool_calls]
            message["content"] = done.text or None
    return {**reply.head(), "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": finish_reason(done.stop_reason)}],
            "usage": usage(done.usage), "timings": timings(done.usage)}


def text_completion(reply: Reply, done: Done | ChatDone) -> dict[str, Any]:
    return {**reply.head(), "choices": [{"index": 0, "text": done.text, "logprobs": None,
                                         "finish_reason": finish_reason(done.stop_reason)}],
            "usage": usage(done.usage), "timings": timings(done.usage)}


def delta_chunk(reply: Reply, delta: dict[str, Any], finish: str | None = None,
                include_usage: bool = False) -> dict[str, Any]:
    """A stream chunk: a chat delta ({"content": ...}) or, for text completions, {"text": ...}."""
    if reply.object == "chat.completion":
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
    chunk = {**reply.head(chunk=True), "choices": [choice]}
    if include_usage:  # OpenAI's shape: every chunk says usage null, the last one before [DONE] holds it
        chunk["usage"] = None
    return chunk


def delta_writer(reply: Reply, field: str, include_usage: bool) -> Callable[[str], bytes]:
    """The SSE event of a chunk carrying one piece of text in `field` ("content", "reasoning_content"; a text
    completion's text), from a template made once per reply. Why: encoding the whole chunk per delta was most of
    the event loop's time while streaming, and every moment the loop holds the GIL the decoder may wait."""
    marker = "\u0000omnid\u0000"
    chunk = delta_chunk(reply, {field: marker}, None, include_usage)
    head, tail = json.dumps(chunk, separators=(",", ":")).split(json.dumps(marker))
    start, end = b"data: " + head.encode(), tail.encode() + b"\n\n"
    return lambda text: start + json.dumps(text).encode() + end


def usage_chunk(reply: Reply, u: Usage) -> dict[str, Any]:
    return {**reply.head(chunk=True), "choices": [], "usage": usage(u), "timings": timings(u)}
