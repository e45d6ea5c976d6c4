"""Conversations, audio and cancellation through --backend remote, against the two real engines that run here:
llama-cpp-python's OpenAI-compatible server (tests/remote_engine.py) and a second omnid through its HTTP
endpoint. The front omnid sends the messages to the engine's /v1/chat/completions and streams its answer back as
the Chat RPC's (and its own HTTP endpoint's) typed events.

Random weights: assertions are on structure (events, usage, statuses, what validates), never on wording; the
schema and the tool calls are held by the engines' grammars, so they validate whatever the weights.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import grpc
import jsonschema
import pytest

from conftest import wav_bytes
from remote_engine import LlamaServer, free_port, kill_all
from omnid.clients.chat import tool
from omnid.clients.client import OmniError, audio, text
from omnid.models.gguf_test_model import TestModelPaths
from omnid.proto import omnid_pb2 as pb

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
#: What llama-cpp-python's schema grammar holds whole (it has no bounds on numbers: PERSON's age goes past 99).
NAMED = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "happy": {"type": "boolean"}},
         "required": ["name", "happy"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [tool("weather", "The weather", WEATHER), tool("clock", "The time")]


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


@pytest.fixture(scope="module", autouse=True)
def no_engine_left() -> Iterator[None]:
    yield
    kill_all()


def http_flags(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, list[str]]:
    port = free_port()
    token = tmp_path_factory.mktemp("token") / "token"
    return port, token, ["--http", f"127.0.0.1:{port}", "--token-file", str(token)]


class Front:
    """The omnid under test (--backend remote), with its own HTTP endpoint too."""

    def __init__(self, start_daemon, tmp_path_factory, url: str, *extra: str) -> None:
        self.port, token, flags = http_flags(tmp_path_factory)
        self.daemon = start_daemon("--remote-url", url, *extra, *flags, model="", mmproj="", backend="remote")
        self.token = token.read_text().strip()

    def openai(self):
        from openai import OpenAI
        return OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.token, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llama_front(start_daemon, tmp_path_factory, test_model: TestModelPaths) -> Iterator[Front]:
    """omnid in front of llama-cpp-python's server on the tiny hybrid model."""
    server = LlamaServer(test_model.text, log=tmp_path_factory.mktemp("engine") / "engine.log").start()
    front = Front(start_daemon, tmp_path_factory, server.url)
    yield front
    front.daemon.stop()
    server.kill()


#: An answer long enough to take seconds on the engine omnid (measured: 30,000 tokens in 19.9 s here, 2 cores).
LONG = 30_000


class OmnidEngine:
    """A second omnid serving the tiny omni model (image and audio) over its OpenAI-compatible HTTP endpoint, with
    room for LONG answers."""

    def __init__(self, start_daemon, tmp_path_factory) -> None:
        port, self.token_file, flags = http_flags(tmp_path_factory)
        self.daemon = start_daemon(*flags, "--ctx", "32768")
        self.url = f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def omnid_engine(start_daemon, tmp_path_factory) -> OmnidEngine:
    return OmnidEngine(start_daemon, tmp_path_factory)


@pytest.fixture(scope="module")
def omnid_front(start_daemon, tmp_path_factory, omnid_engine: OmnidEngine) -> Iterator[Front]:
    front = Front(start_daemon, tmp_path_factory, omnid_engine.url, "--remote-token-file",
                  str(omnid_engine.token_file))
    yield front
    front.daemon.stop()


# -- what each engine was found to honour -------------------------------------------------------------------------


def test_status_says_what_each_engine_honours(llama_front: Front, omnid_front: Front) -> None:
    with llama_front.daemon.client() as client:
        note = client.status().note
    assert "JSON schema (json_object), tools, no thinking switch" in note  # llama-cpp-python's own schema form
    with omnid_front.daemon.client() as client:
        status = client.status()
    assert "JSON schema (json_schema), tools, thinking switch" in status.note
    assert sorted(status.capabilities) == ["audio", "image", "text"]  # the second omnid takes input_audio


# -- conversations over llama-cpp-python's server -----------------------------------------------------------------


def test_a_conversation_over_llama_cpp_server(llama_front: Front) -> None:
    with llama_front.daemon.client() as client:
        talk = client.conversation("You are terse.", max_tokens=6)
        events = list(talk.send(text("hello")))
        assert kinds(events)[-1] == "done" and set(kinds(events)) <= {"delta", "done"}
        first = events[-1].done
        assert first.stop_reason == "max_tokens" and first.usage.generated_tokens == 6
        assert "".join(e.delta for e in events[:-1]).strip() == first.text
        second = talk.ask(text("and then?"))
        assert second.usage.generated_tokens == 6
        assert [m.role for m in talk.messages] == ["user", "assistant", "user", "assistant"]
        again = client.conversation("You are terse.", max_tokens=6)
        assert again.ask(text("hello")).text == first.text  # greedy: the same messages, the same answer


def test_a_schema_answer_over_llama_cpp_server_validates(llama_front: Front) -> None:
    with llama_front.daemon.client() as client:
        done = client.conversation(max_tokens=80).ask(text("who?"), schema=NAMED)
        jsonschema.validate(json.loads(done.text), NAMED)
        with pytest.raises(OmniError) as err:  # its grammar has no number bounds: that answer is not let through
            client.conversation(max_tokens=80).ask(text("who?"), schema=PERSON)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not validate against the response schema" in err.value.details() and "maximum" in err.value.details()


def test_a_forced_tool_call_over_llama_cpp_server_and_its_result(llama_front: Front) -> None:
    with llama_front.daemon.client() as client:
        talk = client.conversation(tools=TOOLS, max_tokens=60)
        events = list(talk.send(text("weather in Oslo?"), tool_choice="weather"))
        calls = [e.tool_call for e in events if e.WhichOneof("event") == "tool_call"]
        done = events[-1].done
        assert [c.name for c in calls] == ["weather"] and list(done.tool_calls) == calls
        assert done.stop_reason == "tool_calls" and calls[0].id
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
        after = [e.done for e in talk.tool_result(calls[0].id, '{"sky": "clear"}') if e.WhichOneof("event") == "done"]
        assert after[0].usage.generated_tokens > 0


@pytest.mark.parametrize("settings, send, says", [
    ({"thinking": False}, {}, "no thinking switch"),
    ({"thinking_budget": 4}, {}, "thinking budget is not supported"),
    ({"tools": TOOLS}, {"tool_choice": "required"}, "answered without the tool call"),
])
def test_what_llama_cpp_server_does_not_honour_is_failed_precondition(llama_front: Front, settings, send,
                                                                     says) -> None:
    with llama_front.daemon.client() as client:
        with pytest.raises(OmniError) as err:
            client.conversation(max_tokens=4, **settings).ask(text("hello"), **send)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert says in err.value.details() and "\n" not in err.value.details()
        assert client.conversation(max_tokens=2).ask(text("hello")).usage.generated_tokens == 2


def test_http_chat_with_a_tool_call_over_llama_cpp_server(llama_front: Front) -> None:
    """The front omnid's own /v1/chat/completions, as an app calls it (the openai package), streamed."""
    stream = llama_front.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather in Oslo?"}], max_tokens=60, stream=True,
        tools=[{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}],
        tool_choice={"type": "function", "function": {"name": "weather"}})
    chunks = list(stream)
    calls = [c for chunk in chunks for choice in chunk.choices for c in (choice.delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["weather"]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_bad_conversation_is_invalid_argument_before_the_engine(llama_front: Front) -> None:
    with llama_front.daemon.client() as client:
        with pytest.raises(OmniError) as err:
            list(client.chat(pb.ChatRequest(messages=[pb.ChatMessage(role="tool", parts=[text("r")],
                                                                     tool_call_id="call_x")])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in err.value.details()
        with pytest.raises(OmniError) as err:
            client.conversation(max_tokens=2).ask(text("word " * 6000))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE, err.value.details()


# -- conversations over a second omnid ----------------------------------------------------------------------------


def test_a_conversation_over_omnid_reports_the_engines_cached_tokens(omnid_front: Front) -> None:
    with omnid_front.daemon.client() as client:
        talk = client.conversation("You are terse.", thinking=False, max_tokens=6)
        first = talk.ask(text("hello " + "and more words " * 30))
        assert first.usage.prompt_tokens > 60 and first.usage.generated_tokens >= 1
        second = talk.ask(text("and then?"))
        assert second.usage.cached_tokens >= 0.9 * first.usage.prompt_tokens, (first.usage, second.usage)


def test_thinking_on_and_off_over_omnid(omnid_front: Front) -> None:
    with omnid_front.daemon.client() as client:
        events = list(client.conversation(thinking=True, max_tokens=6).send(text("think")))
        assert kinds(events)[0] == "reasoning_delta" and kinds(events)[-1] == "done"
        done = events[-1].done
        assert "".join(e.reasoning_delta for e in events[:-1]).strip() == done.reasoning != ""
        off = list(client.conversation(thinking=False, max_tokens=6).send(text("think")))
        assert "reasoning_delta" not in kinds(off) and off[-1].done.reasoning == ""


def test_a_schema_and_a_tool_call_over_omnid(omnid_front: Front) -> None:
    with omnid_front.daemon.client() as client:
        done = client.conversation(thinking=False, max_tokens=80).ask(text("who?"), schema=PERSON)
        jsonschema.validate(json.loads(done.text), PERSON)
        talk = client.conversation(tools=TOOLS, thinking=False, max_tokens=200)
        answer = talk.ask(text("weather in Oslo?"), tool_choice="weather")
        assert [c.name for c in answer.tool_calls] == ["weather"] and answer.stop_reason == "tool_calls"
        jsonschema.validate(json.loads(answer.tool_calls[0].arguments), WEATHER)


def test_http_chat_streams_reasoning_over_omnid(omnid_front: Front) -> None:
    stream = omnid_front.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "think"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True}, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    chunks = list(stream)
    reasoning = "".join(getattr(c.delta, "reasoning_content", None) or "" for chunk in chunks for c in chunk.choices)
    assert reasoning.strip() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_generate_over_omnid_answers_as_the_engine_itself_does(omnid_front: Front, omnid_engine: OmnidEngine) -> None:
    """A single turn (Generate) is answered without thinking, as on a local model: the same greedy text as the
    engine omnid's own Generate, not thinking the client never sees."""
    with omnid_front.daemon.client() as front, omnid_engine.daemon.client() as engine:
        through = front.ask(text("Once upon a time"), max_tokens=8)
        direct = engine.ask(text("Once upon a time"), max_tokens=8)
    assert through.text == direct.text and through.usage.generated_tokens == direct.usage.generated_tokens


# -- audio over a second omnid ------------------------------------------------------------------------------------


def test_an_audio_question_over_omnid(omnid_front: Front) -> None:
    with omnid_front.daemon.client() as client:
        answer = client.ask(audio(wav_bytes(440.0)), text("What do you hear?"), max_tokens=3)
        assert answer.usage.generated_tokens == 3 and answer.usage.prompt_tokens > 10
        talk = client.conversation(thinking=False, max_tokens=3)
        assert talk.ask(audio(wav_bytes(660.0)), text("And this?")).usage.generated_tokens >= 1


def test_a_transcription_over_omnid(omnid_front: Front, tmp_path: Path) -> None:
    """Transcribe: the clip pipeline (clips, prompts, the store) in the front omnid, the model in the engine."""
    from audio_fixtures import speech_wav
    from omnid.clients.meetings import MeetingsClient
    speech = speech_wav(tmp_path, 6.0)
    with omnid_front.daemon.client() as client:
        final = MeetingsClient.transcript(client.transcribe(speech.read_bytes(), no_store=True))
    assert final.segments and final.usage.generated_tokens > 0
    assert all(0 <= s.start_seconds < s.end_seconds <= 6.5 for s in final.segments)


# -- cancellation -------------------------------------------------------------------------------------------------


def test_a_cancelled_answer_frees_both_daemons_at_once(omnid_front: Front, omnid_engine: OmnidEngine) -> None:
    """The client cancels a 30,000-token answer (~20 s of decoding, even for the tiny model) after its first
    piece: the front closes the engine's stream, the engine omnid sees the disconnect and stops decoding, and the
    next question is answered at once."""
    with omnid_front.daemon.client() as client, omnid_engine.daemon.client() as engine:
        request = client.conversation(thinking=False, max_tokens=LONG).request()
        request.messages.append(pb.ChatMessage(role="user", parts=[text("tell me a long story")]))
        stream = client.chat(request)
        assert next(iter(stream)).WhichOneof("event") == "delta"
        t0 = time.monotonic()
        stream.cancel()
        answer = client.conversation(thinking=False, max_tokens=2).ask(text("and now"))
        assert answer.usage.generated_tokens == 2
        took = time.monotonic() - t0
        assert not engine.status().busy  # nothing left decoding there
    assert took < 2.0, took


def test_an_http_client_that_disconnects_frees_both_daemons_at_once(omnid_front: Front,
                                                                    omnid_engine: OmnidEngine) -> None:
    """The same through the front omnid's HTTP endpoint: the client reads the first chunk of a LONG streamed answer
    and closes its socket."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", omnid_front.port, timeout=60)
    body = {"model": "m", "messages": [{"role": "user", "content": "tell me a long story"}], "max_tokens": LONG,
            "stream": True, "chat_template_kwargs": {"enable_thinking": False}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {omnid_front.token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    t0 = time.monotonic()
    conn.sock.shutdown(2)  # gone mid-answer
    conn.close()
    with omnid_front.daemon.client() as client, omnid_engine.daemon.client() as engine:
        assert client.conversation(thinking=False, max_tokens=2).ask(text("and now")).usage.generated_tokens == 2
        took = time.monotonic() - t0
        assert not engine.status().busy
    assert took < 2.0, took
