"""The Chat RPC end to end on real daemons (llama.cpp on the hybrid test model, and mlx), through the Python
client's Conversation, and `omni chat` / `omni ask --schema` in subprocesses.

Random weights write meaningless text: the tests assert on usage, structure and statuses, never on wording.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import jsonschema
import pytest

from conftest import png_bytes
from omnid.clients.chat import tool
from omnid.clients.client import OmniError, image, text
from omnid.proto import omnid_pb2 as pb

OMNI = [sys.executable, "-m", "omnid.clients.cli"]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
           "additionalProperties": False}


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


def test_a_conversation_over_grpc_reuses_each_turn(backend_daemon) -> None:
    with backend_daemon.client() as client:
        talk = client.conversation("You look at pictures.", thinking=False, max_tokens=12)
        first = talk.ask(image(png_bytes(3)), text("What is this? " + "describe the colors and the shapes " * 40))
        turn_one = first.usage.prompt_tokens + first.usage.generated_tokens
        second = talk.ask(text("And now?"))
        assert second.usage.cached_tokens >= 0.95 * turn_one, (first.usage, second.usage)
        assert [m.role for m in talk.messages] == ["user", "assistant", "user", "assistant"]


def test_a_long_history_reports_its_prefill_progress_before_the_answer(backend_daemon) -> None:
    with backend_daemon.client() as client:
        talk = client.conversation(thinking=False, max_tokens=4)
        events = list(talk.send(text(" ".join(f"q{i}" for i in range(700)))))  # shares no prefix with others
        seen = kinds(events)
        progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
        assert len(progress) >= 2 and seen[:len(progress)] == ["progress"] * len(progress)  # before the answer
        assert all(p.stage == "prefilling" and p.unit == "tokens" for p in progress)
        assert [p.done for p in progress] == sorted(p.done for p in progress)
        assert progress[-1].done == progress[-1].total
        done = events[-1].done
        assert progress[0].cached == done.usage.cached_tokens
        assert progress[-1].total == done.usage.prompt_tokens
        again = list(talk.send(text("And now?")))  # the history is cached: nothing long left to evaluate
        assert "progress" not in kinds(again) and again[-1].done.usage.cached_tokens > 700


def test_a_history_that_cannot_fit_is_refused_before_any_prefill(backend_daemon) -> None:
    with backend_daemon.client() as client:
        talk = client.conversation(thinking=False, max_tokens=4)
        first = talk.ask(text("remember this"))
        n_ctx = client.status().context_length
        seen: list[str] = []
        with pytest.raises(grpc.RpcError) as err:
            for event in talk.send(text(" ".join(f"w{i}" for i in range(n_ctx)))):  # more tokens than words
                seen.append(event.WhichOneof("event"))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "tokens over" in err.value.details()
        assert seen == []  # no prefill progress: nothing of it was evaluated
        again = talk.ask(text("still there?"))  # the refused turn left the history (and its cache) as it was
        assert again.usage.cached_tokens >= first.usage.prompt_tokens


def test_reasoning_streams_apart_from_the_answer(backend_daemon) -> None:
    with backend_daemon.client() as client:
        talk = client.conversation(thinking=True, thinking_budget=4, max_tokens=10)
        events = list(talk.send(text("think")))
        seen = kinds(events)
        assert seen[0] == "reasoning_delta" and seen[-1] == "done"
        done = events[-1].done
        assert "".join(e.reasoning_delta for e in events if e.WhichOneof("event") == "reasoning_delta").strip() \
            == done.reasoning
        assert "".join(e.delta for e in events if e.WhichOneof("event") == "delta").strip() == done.text


def test_a_schema_answer_validates(backend_daemon) -> None:
    with backend_daemon.client() as client:
        for seed in (5, 6):
            talk = client.conversation(thinking=False, max_tokens=80, sampling=pb.Sampling(temperature=1, seed=seed))
            done = talk.ask(text("who?"), schema=PERSON)
            jsonschema.validate(json.loads(done.text), PERSON)


def test_tool_calls_come_back_structured_and_results_continue_from_the_cache(backend_daemon) -> None:
    with backend_daemon.client() as client:
        talk = client.conversation(tools=[tool("weather", "The weather", WEATHER), tool("clock", "The time")],
                                   thinking=False, max_tokens=200, sampling=pb.Sampling(temperature=1, seed=2))
        events = list(talk.send(text("weather in Oslo?"), tool_choice="weather"))
        calls = [e.tool_call for e in events if e.WhichOneof("event") == "tool_call"]
        done = events[-1].done
        assert [c.name for c in calls] == ["weather"] and list(done.tool_calls) == calls
        assert done.stop_reason == "tool_calls"
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
        after = talk.tool_result(calls[0].id, '{"sky": "clear"}')
        final = [e.done for e in after if e.WhichOneof("event") == "done"][0]
        assert final.usage.cached_tokens >= done.usage.prompt_tokens


def chat_request(*messages: pb.ChatMessage, **kw) -> pb.ChatRequest:
    return pb.ChatRequest(messages=list(messages), max_tokens=4, **kw)


def user(*parts: pb.Part) -> pb.ChatMessage:
    return pb.ChatMessage(role="user", parts=list(parts))


@pytest.mark.parametrize("request_, code, says", [
    (chat_request(user(text("a")), pb.ChatMessage(role="assistant", parts=[image(png_bytes(1))]), user(text("b"))),
     grpc.StatusCode.INVALID_ARGUMENT, "only a user turn may carry media"),
    (chat_request(user(text("a")), response_schema_json='{"type": "nope"}'),
     grpc.StatusCode.INVALID_ARGUMENT, "not a valid JSON Schema"),
    (chat_request(user(text("a")), response_schema_json='[1'), grpc.StatusCode.INVALID_ARGUMENT, "not JSON"),
    (chat_request(user(text("a")), pb.ChatMessage(role="tool", parts=[text("r")], tool_call_id="call_x")),
     grpc.StatusCode.INVALID_ARGUMENT, "which no assistant turn before it called"),
    (chat_request(user(text("a")), tool_choice="ghost"), grpc.StatusCode.INVALID_ARGUMENT, "tool_choice"),
    (chat_request(), grpc.StatusCode.INVALID_ARGUMENT, "no messages"),
    (chat_request(user(text("word " * 6000))), grpc.StatusCode.OUT_OF_RANGE, "tokens over the model's context"),
])
def test_bad_conversations_get_a_status_and_a_one_line_reason(daemon, request_, code, says) -> None:
    with daemon.client() as client:
        with pytest.raises(OmniError) as err:
            list(client.chat(request_))
        assert err.value.code() == code and says in err.value.details() and "\n" not in err.value.details()
        assert client.status().model_loaded  # the daemon is still there


def test_generate_keeps_working(daemon) -> None:
    with daemon.client() as client:
        answer = client.ask(text("hello"), max_tokens=3)
        assert answer.usage.generated_tokens >= 1


def omni(daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*OMNI, "--socket", str(daemon.socket), *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_omni_ask_with_a_schema_prints_json_that_validates(daemon, tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    result = omni(daemon, "ask", "who is it?", "--schema", str(schema), "--max-tokens", "80", "--temperature", "1")
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), PERSON)
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": 5}')
    refused = omni(daemon, "ask", "x", "--schema", str(bad))
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr
    for content, says in (('{"type": "object", "properties": {"a": ', "is not JSON"),
                          ("[" * 100_000 + "]" * 100_000, "nested too deeply")):
        bad.write_text(content)
        refused = omni(daemon, "ask", "x", "--schema", str(bad))
        assert refused.returncode != 0 and says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_omni_ask_with_a_schema_shows_a_long_prefill_and_keeps_stdout_json(daemon, tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    long_question = " ".join(f"asked{i}" for i in range(150))  # shares no prefix with other tests
    result = omni(daemon, "ask", long_question, "--schema", str(schema), "--max-tokens", "80")
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), PERSON)  # the progress went to stderr only
    lines = [line for line in result.stderr.splitlines() if line.startswith("prefilling:")]
    assert lines and "\r" not in result.stderr, result.stderr
    done, total = map(int, re.match(r"prefilling: (\d+)/(\d+) tokens", lines[-1]).groups())  # type: ignore[union-attr]
    assert done == total > 512
    quiet = omni(daemon, "ask", long_question + " again", "--schema", str(schema), "--max-tokens", "80", "--json")
    assert quiet.returncode == 0 and "prefilling" not in quiet.stderr, quiet.stderr  # --json: no progress


def test_omni_chat_keeps_the_history_and_takes_commands(daemon, tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(png_bytes(9))
    script = "\n".join([f"/image {picture}", "what is this?", "/think on", "and now?", "/think off", "/bogus",
                        "/clear", "fresh start", "/bye", "never sent"]) + "\n"
    result = omni(daemon, "chat", "-v", "--max-tokens", "6", "--thinking-budget", "2", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "[image" in result.stdout and "[thinking on]" in result.stdout and "[conversation cleared]" in result.stdout
    assert "[thinking]" in result.stdout  # the thinking, marked apart from the answer (no terminal: no colors)
    usage = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(usage) == 3, result.stderr  # three turns answered, "never sent" after /bye
    cached = [int(re.search(r"(\d+) cached", line).group(1)) for line in usage]  # type: ignore[union-attr]
    assert cached[1] > 16, result.stderr
    assert "unknown command /bogus" in result.stderr


def test_omni_chat_shows_a_long_prefill_as_omni_ask_does(daemon) -> None:
    long_line = " ".join(f"said{i}" for i in range(600))  # shares no prefix with other tests
    result = omni(daemon, "chat", "--max-tokens", "2", "--think", "off", stdin=f"{long_line}\nshort\n")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("prefilling:")]
    assert lines and "\r" not in result.stderr, result.stderr  # not a terminal: plain lines, no redraws
    done, total = map(int, re.match(r"prefilling: (\d+)/(\d+) tokens", lines[-1]).groups())  # type: ignore[union-attr]
    assert done == total > 512  # and the short second turn, from the cache, showed none
    assert all(int(re.match(r"prefilling: \d+/(\d+)", line).group(1)) == total for line in lines)  # type: ignore


def test_a_screen_grab_is_a_part_of_a_conversation_in_the_client_and_in_omni_chat(start_daemon) -> None:
    from screen_x11 import TkWindow, Xvfb, xvfb_missing
    if xvfb_missing():
        pytest.skip(xvfb_missing() or "")
    import os
    server = Xvfb(640, 480)
    saved = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = server.display
    try:
        screen_daemon = start_daemon()
    finally:
        os.environ.pop("DISPLAY") if saved is None else os.environ.__setitem__("DISPLAY", saved)
    window = TkWindow(server.display, "Chart", "300x200+10+10", "#a03060")
    try:
        with screen_daemon.client() as client:
            talk = client.conversation(thinking=False, max_tokens=3)
            with_screen = talk.ask(pb.Part(screen=pb.ScreenRef(monitor=1)), text("What is on my screen?"))
            without = client.conversation(thinking=False, max_tokens=3).ask(text("What is on my screen?"))
            assert with_screen.usage.prompt_tokens > without.usage.prompt_tokens + 10
            again = talk.ask(text("And now?"))  # the grab stays in the history, from the cache
            assert again.usage.cached_tokens >= with_screen.usage.prompt_tokens
        result = omni(screen_daemon, "chat", "-v", "--max-tokens", "3", "--think", "off",
                      stdin="what is this?\n/clear\n/screen\nwhat is this?\n")
        assert result.returncode == 0, result.stderr
        prompts = [int(line[1:].split()[0]) for line in result.stderr.splitlines() if line.startswith("[")]
        assert len(prompts) == 2 and prompts[1] > prompts[0] + 10, result.stderr  # the grab, in the second
    finally:
        window.close()
        server.close()
