"""The remote backend against a REAL engine: llama-cpp-python's OpenAI-compatible server on the tiny test GGUF.

The engine is its own process (tests/remote_engine.py), killed and restarted by the tests that need it gone.
Random weights: assertions are on structure (token counts, stop reasons, statuses, which engine answered),
never on wording. The contract checks that apply to a remote engine run in tests/test_backend_conformance.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from remote_engine import LlamaServer, free_port, kill_all
from omnid.clients.client import OmniError, text
from omnid.models.base import ImageSegment, InputError, ModelLoadError, TextSegment
from omnid.models.gguf_test_model import TestModelPaths
from omnid.models.remote_backend import RemoteBackend, RemoteSettings, connect
from omnid.models.remote_http import check_url
from omnid.proto import omnid_pb2 as pb

grpc = pytest.importorskip("grpc")


@pytest.fixture(scope="module", autouse=True)
def no_engine_left() -> Iterator[None]:
    """Whatever a failed test left running is killed with this module (see tests/remote_engine.py)."""
    yield
    kill_all()


@pytest.fixture(scope="module")
def engine(test_model: TestModelPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The engine on the tiny hybrid model (llama.cpp's nemotron_h support serves it as it is)."""
    server = LlamaServer(test_model.text, log=tmp_path_factory.mktemp("engine") / "engine.log").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def remote(engine: LlamaServer) -> RemoteBackend:
    return connect(RemoteSettings((engine.url,)), 4096)


@pytest.fixture(scope="module")
def omni_layout(remote: RemoteBackend) -> RemoteBackend:
    """The same engine as if it took images and audio: for how prompts are laid out (nothing is sent)."""
    info = dataclasses.replace(remote.info, capabilities=frozenset({"text", "image", "audio"}))
    return RemoteBackend(remote.settings, info, remote.router, None)


def remote_daemon(start_daemon, url: str, *extra: str):
    return start_daemon("--remote-url", url, *extra, model="", mmproj="", backend="remote")


def held(backend: RemoteBackend, *parts, system: str = "") -> RemoteBackend:
    f = backend.chat_frame()
    segments = [TextSegment(f.user_open, template=True), *parts, TextSegment(f.user_close, template=True)]
    if system:
        segments[:0] = [TextSegment(f.system_open, template=True), TextSegment(system),
                        TextSegment(f.system_close, template=True)]
    backend.hold(segments, affinity=3 if system else 0)
    return backend


def run(backend: RemoteBackend, max_tokens: int = 4) -> list[str]:
    pieces: list[str] = []
    backend.stream(max_tokens, temperature=0.0, top_p=0.0, top_k=0, seed=1,
                   on_text=lambda piece: pieces.append(piece) is not None, should_stop=lambda: False)
    return pieces


# -- start-up --------------------------------------------------------------------------------------------------


def test_start_up_reads_the_model_its_tokenizer_and_probes_the_media(remote: RemoteBackend,
                                                                     test_model: TestModelPaths) -> None:
    info = remote.info
    assert info.backend == "remote" and info.name == str(test_model.text)  # the engine's own model id
    assert info.capabilities == {"text"}  # a text-only engine: the image and audio probes did not count up
    assert "llama-cpp-python /extras/tokenize" in info.note and "(probed)" in info.note
    # llama-cpp-python's server does not report its context: omnid's --ctx stands, and the note says so
    assert info.context_length == 4096 and "--ctx" in info.note
    words = TextSegment("hello world, hello again")
    assert remote.count_tokens(words) == len(remote.tokenize(words)) > 0  # the engine's tokens, without its BOS


def test_an_engine_that_does_not_say_its_context_needs_ctx(engine: LlamaServer) -> None:
    with pytest.raises(ModelLoadError, match="pass --ctx"):
        connect(RemoteSettings((engine.url,)), 0)  # 0: --ctx not given


def test_an_unreachable_engine_is_one_line_at_start_up() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelLoadError, match="cannot be reached") as err:
        connect(RemoteSettings((url,)), 4096)
    assert "\n" not in str(err.value) and url in str(err.value)


def test_a_model_the_engine_does_not_serve_is_refused(engine: LlamaServer) -> None:
    with pytest.raises(ModelLoadError, match="does not serve 'no-such-model'"):
        connect(RemoteSettings((engine.url,), model="no-such-model"), 4096)


def test_something_that_is_not_an_openai_api_is_refused(engine: LlamaServer) -> None:
    with pytest.raises(ModelLoadError, match="OpenAI-compatible"):
        connect(RemoteSettings((engine.url.removesuffix("/v1") + "/nothing/v1",)), 4096)


def test_plain_http_leaves_this_machine_only_with_remote_insecure() -> None:
    with pytest.raises(ModelLoadError, match="--remote-insecure"):
        check_url("http://10.1.2.3:8000/v1", insecure=False)
    assert check_url("http://10.1.2.3:8000/v1/", insecure=True) == "http://10.1.2.3:8000/v1"
    assert check_url("https://gpu.example:8000/v1", insecure=False)
    assert check_url("http://[::1]:8000/v1", insecure=False) and check_url("http://localhost:1/v1", insecure=False)
    with pytest.raises(ModelLoadError, match="token-file"):
        check_url("https://user:secret@gpu.example/v1", insecure=False)


def test_https_is_verified(tmp_path: Path) -> None:
    """An engine behind a certificate nobody vouches for (self-signed) is refused at start-up."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    cert, key = _self_signed(tmp_path)

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"data": [{"id": "m"}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ModelLoadError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            connect(RemoteSettings((f"https://127.0.0.1:{server.server_address[1]}/v1",)), 4096)
    finally:
        server.shutdown()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_the_token_is_sent_and_never_shown(test_model: TestModelPaths, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-remote-" + os.urandom(8).hex()
    guarded = LlamaServer(test_model.text, n_ctx=1024, api_key=secret).start()
    try:
        caplog.set_level(logging.DEBUG)
        with pytest.raises(ModelLoadError, match="refused the token") as wrong:
            connect(RemoteSettings((guarded.url,), token="sk-wrong"), 1024)
        backend = connect(RemoteSettings((guarded.url,), token=secret), 1024)
        assert run(held(backend, TextSegment("hello")))
        with pytest.raises(ModelLoadError) as other:
            connect(RemoteSettings((guarded.url,), model="absent", token=secret), 1024)
        shown = [caplog.text, str(wrong.value), str(other.value), repr(backend.settings),
                 repr(backend.router.engines)]
        assert not [s for s in shown if secret in s]
    finally:
        guarded.kill()


def test_serve_refuses_an_unreachable_engine_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = subprocess.run([sys.executable, "-m", "omnid.daemon", "serve", "--backend", "remote", "--remote-url", url,
                           "--socket", str(tmp_path / "run" / "s.sock"), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot be reached" in done.stderr and url in done.stderr


# -- prompts: messages, byte-identical prefixes -----------------------------------------------------------------


def test_the_prompt_becomes_chat_messages(omni_layout: RemoteBackend) -> None:
    remote = omni_layout
    f = remote.chat_frame()
    image = ImageSegment(np.full((8, 8, 3), 7, np.uint8))
    template = [TextSegment(p, template=True) for p in (f.system_open, f.system_close, f.user_open, f.user_close,
                                                        f.assistant_close)]
    remote.hold([template[0], TextSegment("sys"), template[1], template[2], TextSegment("a"), TextSegment("b"),
                 image, TextSegment("c"), template[3], TextSegment("earlier answer"), template[4], template[2],
                 TextSegment("next"), template[3]], affinity=3)
    messages = remote.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "sys" and messages[2]["content"] == "earlier answer"
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"] and parts[0]["text"] == "ab"
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert messages[3]["content"] == "next"  # text alone: a plain string, as every engine takes it


def test_prompts_sharing_a_prefix_are_byte_identical_over_it(omni_layout: RemoteBackend) -> None:
    """What lets the engine's prefix cache hit: the same document (and the same pixels, in another array) is
    sent as the same bytes, whatever question follows."""
    document = TextSegment("A long document. " * 50)

    def body(question: str) -> bytes:
        picture = ImageSegment(np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3).copy())
        held(omni_layout, picture, document, TextSegment(question), system="You read documents.")
        return json.dumps(omni_layout.request(8), separators=(",", ":")).encode()
    first, second = body("What is on page one?"), body("Who wrote it?")
    shared = os.path.commonprefix([first, second])
    assert document.text.encode() in shared and b"data:image/png;base64," in shared
    assert first != second


def test_each_sequence_holds_its_own_prompt(remote: RemoteBackend) -> None:
    """One held prompt per sequence: a view bound to one (what a job thread streams through) leaves the others'
    prompts alone, and the caches they share answer them all; threads stream through their views at once."""
    from concurrent.futures import ThreadPoolExecutor
    several = RemoteBackend(remote.settings, remote.info, remote.router, None, sequences=3)
    assert several.n_sequences == 3
    views = [held(several.on_sequence(seq), TextSegment(f"prompt {seq}")) for seq in range(3)]
    assert [v.messages()[0]["content"] for v in views] == ["prompt 0", "prompt 1", "prompt 2"]
    several.select(1)
    assert several.messages()[0]["content"] == "prompt 1"
    views[1].reset()
    assert several.n_tokens == 0 and views[2].n_tokens > 0
    with pytest.raises(InputError):
        several.on_sequence(3)
    with pytest.raises(InputError):
        several.select(-1)
    alone = run(held(several.on_sequence(0), TextSegment("Once upon a time")))
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda seq: run(held(several.on_sequence(seq), TextSegment("Once upon a time"))),
                                 range(3)))
    assert together == [alone] * 3 and alone


def test_a_conversations_next_turn_is_byte_identical_over_its_history(omni_layout: RemoteBackend) -> None:
    """What lets the engine's prefix cache serve a conversation: turn 2's request repeats turn 1's messages (an
    image in another array included) byte for byte before the new ones."""
    from omnid.daemon.conversation import Message
    from omnid.daemon.remote_chat import message
    from omnid.models.base import RemoteChat

    def body(*messages: Message) -> bytes:
        request = RemoteChat(tuple(message(omni_layout, m) for m in messages), 8)
        return json.dumps(omni_layout.body(request), separators=(",", ":")).encode()

    def picture() -> ImageSegment:
        return ImageSegment(np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3).copy())
    first = body(Message("system", (TextSegment("You look at pictures."),)),
                 Message("user", (picture(), TextSegment("What is this?"))))
    second = body(Message("system", (TextSegment("You look at pictures."),)),
                  Message("user", (picture(), TextSegment("What is this?"))),
                  Message("assistant", (TextSegment("A gradient."),)), Message("user", (TextSegment("Colors?"),)))
    turn_one = first[:first.index(b'],"stream"')]  # the messages, up to the closing bracket of the list
    assert second.startswith(turn_one) and b"data:image/png;base64," in turn_one


def test_media_the_engine_cannot_take_is_refused_before_any_request(remote: RemoteBackend) -> None:
    with pytest.raises(InputError) as err:
        remote.hold([ImageSegment(np.zeros((8, 8, 3), np.uint8))], affinity=0)
    assert err.value.unsupported


# -- through the daemon ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_client(start_daemon, engine: LlamaServer):
    daemon = remote_daemon(start_daemon, engine.url)
    with daemon.client() as client:
        yield client


def test_status_shows_the_remote_engine(remote_client, engine: LlamaServer) -> None:
    status = remote_client.status()
    assert status.backend == "remote" and status.model_path == engine.url
    assert list(status.capabilities) == ["text"] and status.context_length == 4096
    assert "remote engine" in status.note


def test_generate_streams_from_the_engine_and_honours_max_tokens(remote_client) -> None:
    answer = remote_client.ask(text("Once upon a time"), max_tokens=7)
    assert answer.stop_reason == "max_tokens" and answer.usage.generated_tokens == 7
    assert answer.usage.prompt_tokens > 0 and answer.usage.time_to_first_token_ms > 0
    assert remote_client.ask(text("Once upon a time"), max_tokens=7).text == answer.text  # greedy: the same


def test_a_stop_string_ends_the_answer(remote_client) -> None:
    whole = remote_client.ask(text("Once upon a time"), max_tokens=24).text
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {whole!r}"
    cut = remote_client.ask(text("Once upon a time"), max_tokens=24, sampling=pb.Sampling(stop=[stop]))
    assert cut.stop_reason == "stop" and cut.text == whole[:whole.index(stop)]


@pytest.mark.skip(reason="llama-cpp-python's server, cancelled mid-stream, sometimes keeps decoding (seen: one "
                  "engine at 95% CPU for 18 min) while it holds its one model lock, and the next request waits on it "
                  "(its server's defect, not omnid's). The same test against a second omnid, whose disconnect "
                  "handling is ours: test_remote_chat.py::test_a_cancelled_answer_frees_both_daemons_at_once")
def test_a_cancelled_answer_frees_the_engine_at_once(remote_client) -> None:
    """The client cancels a 1,900-token answer (~4 s here) after its first piece: the HTTP stream is closed,
    the engine stops, and the next request is answered well before the long one would have ended."""
    stream = remote_client.generate(text("tell me a long story"), max_tokens=1900)
    next(iter(stream))
    t0 = time.monotonic()
    stream.cancel()
    answer = remote_client.ask(text("and now"), max_tokens=2)
    assert answer.usage.generated_tokens == 2
    assert time.monotonic() - t0 < 3.0


def test_prefill_warms_the_engine_and_pins_nothing_of_omnid(remote_client) -> None:
    """A Prefill over a remote engine is a one-token request (the engine's prefix cache keeps the prompt): it
    answers with the prefix's key, like a local one."""
    reply = remote_client.prefill(text("A shared context for later questions."), system="You are terse.", pin=True)
    assert reply.prefix_id and reply.prompt_tokens > 0
    assert remote_client.unpin(reply.prefix_id)


def test_the_engines_cached_tokens_are_read_from_its_usage() -> None:
    """vLLM and SGLang report their prefix cache's reuse as usage.prompt_tokens_details.cached_tokens (llama-cpp-
    python's server reports no usage when streaming, so this is the reading of the field alone)."""
    from omnid.models.remote_backend import _usage_counts
    assert _usage_counts({"prompt_tokens": 900, "completion_tokens": 4,
                          "prompt_tokens_details": {"cached_tokens": 768}}) == (900, 768)
    assert _usage_counts({"prompt_tokens": 12}) == (12, None) and _usage_counts({}) == (None, None)


def test_the_daemon_reads_the_engine_token_from_a_private_file(start_daemon, test_model: TestModelPaths,
                                                               tmp_path: Path) -> None:
    secret = "sk-file-" + os.urandom(8).hex()
    guarded = LlamaServer(test_model.text, n_ctx=1024, api_key=secret).start()
    try:
        token_file = tmp_path / "engine-token"
        token_file.write_text(secret + "\n")
        token_file.chmod(0o600)
        daemon = remote_daemon(start_daemon, guarded.url, "--remote-token-file", str(token_file))
        with daemon.client() as client:
            assert client.ask(text("hello"), max_tokens=2).usage.generated_tokens == 2
        daemon.stop()
    finally:
        guarded.kill()


def test_a_document_question_over_the_remote_engine(remote_client, tmp_path: Path) -> None:
    from documents_pdfs import make_report
    info = remote_client.ingest_document(make_report(3, lines=1))
    assert info.pages and all(p.tokens > 0 for p in info.pages)  # counted by the engine's tokenizer
    events = list(remote_client.ask_document(info.document_id, "What is on page 2?", max_tokens=3))
    assert events[-1].WhichOneof("event") == "done" and events[-1].done.usage.generated_tokens == 3


@pytest.fixture(scope="module")
def vision_engine(test_model: TestModelPaths) -> Iterator[LlamaServer]:
    """The engine with the tiny model's projector: it takes images."""
    server = LlamaServer(test_model.text, mmproj=test_model.mmproj).start()
    yield server
    server.kill()


def test_an_engine_that_takes_images_is_probed_as_such(vision_engine: LlamaServer) -> None:
    info = connect(RemoteSettings((vision_engine.url,)), 4096).info
    assert info.capabilities == {"text", "image"}  # its server refuses input_audio: no audio


def test_an_image_and_a_screen_frame_over_the_remote_engine(start_daemon, vision_engine: LlamaServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate with an image, and ScreenOnce (a grabbed frame described): the same pipelines, the engine's model."""
    from conftest import png_bytes, wav_bytes
    from screen_x11 import Xvfb, xvfb_missing
    from omnid.clients.client import audio, image
    if xvfb_missing():
        pytest.skip(xvfb_missing() or "")
    screen = Xvfb(320, 240)
    try:
        monkeypatch.setenv("DISPLAY", screen.display)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        daemon = remote_daemon(start_daemon, vision_engine.url)
        with daemon.client() as client:
            assert sorted(client.status().capabilities) == ["image", "text"]
            answer = client.ask(image(png_bytes(3)), text("What is this?"), max_tokens=3)
            assert answer.usage.generated_tokens == 3
            done = [e.done for e in client.screen_once(max_tokens=3) if e.WhichOneof("event") == "done"]
            assert len(done) == 1 and done[0].usage.generated_tokens == 3
            with pytest.raises(OmniError) as err:  # sound: the engine does not take it, so omnid refuses it
                client.ask(audio(wav_bytes(440.0)), max_tokens=2)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        daemon.stop()
    finally:
        screen.close()


def test_an_engine_dies_with_the_test_process_that_started_it(test_model: TestModelPaths, tmp_path: Path) -> None:
    """A test process killed before its teardown (SIGKILL, a CI timeout) takes its engines with it: no
    llama_cpp.server is left decoding on its own (PR_SET_PDEATHSIG in tests/remote_engine.py)."""
    script = ("import os, sys; sys.path.insert(0, sys.argv[1]); from remote_engine import LlamaServer; "
              "server = LlamaServer(sys.argv[2], n_ctx=512).start(); print(server.process.pid, flush=True); "
              "os._exit(0)")  # gone without killing it, as pytest killed
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(test_model.text)],
                          capture_output=True, text=True, timeout=120)
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _alive(pid)
    if left:
        os.kill(pid, signal.SIGKILL)  # not to leave it behind when this fails
    assert not left


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, waiting for init to reap it


def test_an_engine_lost_mid_answer_is_unavailable_and_the_daemon_recovers(start_daemon,
                                                                         test_model: TestModelPaths) -> None:
    server = LlamaServer(test_model.text).start()
    try:
        daemon = remote_daemon(start_daemon, server.url)
        with daemon.client() as client:
            stream = client.generate(text("tell me a long story"), max_tokens=1900)
            assert next(iter(stream)).WhichOneof("event") == "delta"
            server.kill()
            t0 = time.monotonic()
            with pytest.raises(OmniError) as lost:
                for _ in stream:
                    pass
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and "went away" in lost.value.details()
            assert time.monotonic() - t0 < 5.0  # never a hang
            with pytest.raises(OmniError) as down:
                client.ask(text("hello"), max_tokens=2)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot be reached" in down.value.details()
            server.start()  # the same port
            assert client.ask(text("hello"), max_tokens=2).usage.generated_tokens == 2
            talk = iter(client.conversation(max_tokens=1900).send(text("tell me a long story")))
            assert next(talk).WhichOneof("event") == "delta"  # a conversation turn, lost the same way
            server.kill()
            with pytest.raises(OmniError) as lost:
                for _ in talk:
                    pass
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and "went away" in lost.value.details()
    finally:
        server.kill()


# -- several engines ---------------------------------------------------------------------------------------------


def test_prefix_affinity_routing_and_a_dead_engine_skipped(test_model: TestModelPaths) -> None:
    first, second = LlamaServer(test_model.text, n_ctx=1024).start(), LlamaServer(test_model.text, n_ctx=1024).start()
    try:
        backend = connect(RemoteSettings((first.url, second.url), retry_after=0.5), 1024)
        one, two = backend.router.engines

        def served_by(system: str) -> object:
            before = (one.served, two.served)
            run(held(backend, TextSegment("question"), system=system), max_tokens=2)
            return one if one.served > before[0] else two
        home = served_by("system text A")
        assert all(served_by("system text A") is home for _ in range(3))  # the same prefix, the same engine
        away = served_by("system text B")
        assert away is not home  # a new prefix goes to the least loaded one
        (first if home is one else second).kill()
        assert served_by("system text A") is away  # its engine died: the other answers, no error
        (first if home is one else second).start()
        time.sleep(0.6)  # past retry_after: the engine that came back is tried again for new prefixes
        assert home in {served_by(f"system text {k}") for k in "CDEFGH"}
    finally:
        first.kill()
        second.kill()


def test_a_second_omnid_is_an_engine_through_its_http_endpoint(start_daemon, tmp_path: Path) -> None:
    """One omnid serves the tiny omni model over its OpenAI-compatible endpoint; a second runs every pipeline
    with `--backend remote` against it (the token the first one requires, read from a private file)."""
    token = tmp_path / "token"
    token.write_text("omnid-engine-" + os.urandom(12).hex() + "\n")
    token.chmod(0o600)
    port = free_port()
    engine = start_daemon("--http", f"127.0.0.1:{port}", "--token-file", str(token))
    front = remote_daemon(start_daemon, f"http://127.0.0.1:{port}/v1", "--remote-token-file", str(token))
    with front.client() as client:
        status = client.status()
        assert status.backend == "remote" and "image" in status.capabilities
        first = client.ask(text("Once upon a time"), max_tokens=3)
        assert first.usage.prompt_tokens > 0 and 1 <= first.usage.generated_tokens <= 3
        assert client.ask(text("Once upon a time"), max_tokens=3).text == first.text  # greedy on both sides
    with engine.client() as direct:
        cache = direct.status().cache
        assert cache.hits >= 1  # the second request reused the first one's prefix in the engine omnid's cache
    front.stop()
