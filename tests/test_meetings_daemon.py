"""Transcribe / meetings RPCs and CLI against a real `omnid serve` on the tiny model; the SQLite store.

Random weights: assertions are on statuses, segment timestamps, usage, stored rows and files, not on wording.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile

from audio_fixtures import speech_wav
from omnid.modalities.meeting_store import MeetingStore
from omnid.modalities.meetings import TranscriptSegment


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("speech"), 70)


def _events(stream):
    segments, progress, finals = [], [], []
    for event in stream:
        kind = event.WhichOneof("event")
        {"segment": segments, "progress": progress, "done": finals}[kind].append(getattr(event, kind))
    assert len(finals) == 1
    return segments, progress, finals[0]


def test_transcribe_a_file_streams_timestamped_segments_and_stores_them(client, speech: Path) -> None:
    segments, progress, final = _events(client.transcribe(speech, summary=True, title="standup"))
    assert len(segments) >= 3
    assert segments[0].start_seconds == 0.0
    for a, b in zip(segments, segments[1:]):
        assert a.end_seconds == pytest.approx(b.start_seconds)
    assert final.duration_seconds == pytest.approx(70.0, abs=0.01) == segments[-1].end_seconds
    assert progress[-1].audio_seconds_total == pytest.approx(70.0, abs=0.01)
    u = final.usage
    assert u.prompt_tokens > 12 * 70 and u.generated_tokens > 0 and u.total_ms > 0
    assert Path(final.audio_path).is_file()                       # the upload is kept next to the transcript
    stored = client.meeting(final.meeting_id)
    assert [s.start_seconds for s in stored.segments] == [s.start_seconds for s in segments]
    assert stored.summary == final.summary and stored.usage.prompt_tokens == u.prompt_tokens
    assert final.meeting_id in [m.meeting_id for m in client.meetings()]


def test_a_client_that_goes_away_stops_the_transcription_and_keeps_what_was_done(client, speech: Path) -> None:
    stream = client.transcribe(speech, title="walked out")
    first = next(e for e in stream if e.WhichOneof("event") == "segment")
    stream.cancel()
    # Had it gone on without its client, clip jobs would follow each other with no gap: the decoder seen idle
    # at several polls in a row means the meeting's handler is done.
    idle_polls = 0
    deadline = time.monotonic() + 60
    while idle_polls < 5:
        assert time.monotonic() < deadline, "the decoder never went idle after the client left"
        status = client.status()
        idle_polls = idle_polls + 1 if not status.busy and status.queue_depth == 0 else 0
        threading.Event().wait(0.02)
    row = next(m for m in client.meetings() if m.title == "walked out")
    stored = client.meeting(row.meeting_id)
    assert stored.segments[0].start_seconds == first.segment.start_seconds
    assert 0 < stored.duration_seconds < 70  # marked cancelled where it stopped, not finished


def test_transcribe_by_path_from_44k_stereo_resamples_in_the_pipeline(client, tmp_path_factory, speech) -> None:
    pcm, rate = soundfile.read(speech, dtype="float32", frames=16_000 * 20)
    folder = tmp_path_factory.mktemp("stereo")
    path = folder / "stereo.flac"
    from omnid.modalities.audio_io import resample
    x = resample(pcm, rate, 44_100)
    soundfile.write(path, np.stack([x, x], axis=1), 44_100)
    _, _, final = _events(client.transcribe(path, by_path=True))
    assert final.audio_path == str(path) and final.duration_seconds == pytest.approx(20.0, abs=0.01)


def test_transcribe_pcm(client) -> None:
    samples = (0.1 * np.random.default_rng(0).standard_normal((16_000 * 3, 2))).astype(np.float32)
    segments, _, final = _events(client.transcribe(samples, sample_rate=16_000))
    assert len(segments) == 1 and final.duration_seconds == pytest.approx(3.0)
    assert soundfile.info(final.audio_path).frames == 48_000


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_bad_input_gets_clear_statuses(client, tmp_path_factory) -> None:
    empty_wav = io.BytesIO()
    soundfile.write(empty_wav, np.zeros(0, np.float32), 16_000, format="WAV")
    assert _code(lambda: _events(client.transcribe(b"garbage" * 100))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _events(client.transcribe(empty_wav.getvalue()))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _events(client.transcribe(np.zeros(0, np.float32), sample_rate=16_000))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _events(client.transcribe(np.zeros(100, np.float32), sample_rate=1_000))) == \
        grpc.StatusCode.INVALID_ARGUMENT                          # wrong sample format / rate
    assert _code(lambda: _events(client.transcribe("/etc/hostname", by_path=True))) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: client.meeting("nope")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.control_meeting("dance")) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.control_meeting("status").state == "none"


def test_no_input_device_is_failed_precondition(client, monkeypatch) -> None:
    """The daemon of this suite runs without a sound server: no device to record from."""
    if client.audio_devices():
        pytest.skip("this machine has an input device")
    assert _code(lambda: _events(client.record_meeting(max_seconds=1))) == grpc.StatusCode.FAILED_PRECONDITION


def test_a_model_without_an_audio_encoder_cannot_transcribe(start_daemon, speech: Path) -> None:
    daemon = start_daemon(mmproj="")
    with daemon.client() as c:
        assert _code(lambda: _events(c.transcribe(speech))) == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_transcribe_json_list_show_search(daemon, speech: Path) -> None:
    env_cmd = [sys.executable, "-m", "omnid.clients.cli", "--socket", str(daemon.socket)]
    out = subprocess.run([*env_cmd, "transcribe", str(speech), "--json", "--title", "cli weekly sync"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= {"segments", "text", "usage", "meeting_id", "summary", "audio_path"}
    assert result["usage"]["prompt_tokens"] > 0 and result["segments"][-1]["end_seconds"] == pytest.approx(70, abs=0.01)
    streamed = subprocess.run([*env_cmd, "transcribe", str(speech)], capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0 and streamed.stdout.splitlines()[0].startswith("[00:00.0 -> ")
    listing = subprocess.run([*env_cmd, "meeting", "list"], capture_output=True, text=True, timeout=30)
    assert result["meeting_id"] in listing.stdout
    found = subprocess.run([*env_cmd, "meeting", "search", "weekly"], capture_output=True, text=True, timeout=30)
    assert result["meeting_id"] in found.stdout
    shown = subprocess.run([*env_cmd, "meeting", "show", result["meeting_id"], "--json"], capture_output=True,
                           text=True, timeout=30)
    assert json.loads(shown.stdout)["segments"] == result["segments"]
    bad = subprocess.run([*env_cmd, "transcribe", "/nonexistent.wav"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "nonexistent" in bad.stderr


def test_store_search_and_interrupted_meetings(tmp_path: Path) -> None:
    store = MeetingStore(tmp_path)
    a = store.create("Budget review", "/a.wav", "transcribing")
    store.add_segment(a, 0, TranscriptSegment(0.0, 20.0, "Alice will send the budget numbers on Friday."))
    store.add_segment(a, 1, TranscriptSegment(20.0, 41.5, "Bob owns the release notes."))
    store.update(a, state="done", summary="Action items: Alice sends numbers.")
    b = store.create("Standup", "/b.wav", "recording")
    store.add_segment(b, 0, TranscriptSegment(0.0, 15.0, "Nothing about money here."))
    assert [r.id for r in store.search("budget")] == [a]
    assert [r.id for r in store.search("releas")] == [a]                # the last word is a prefix
    assert "[Bob]" in store.search("bob")[0].snippet
    assert store.search('"; DROP TABLE meetings; --') == []             # user text is never FTS syntax
    assert {r.id for r in store.search("alice")} == {a}                 # transcript and summary, once
    row, segs = store.get(a)
    assert row.duration == 41.5 and [s.end for s in segs] == [20.0, 41.5]
    store.close()
    reopened = MeetingStore(tmp_path)                                   # a daemon restart
    assert reopened.get(b)[0].state == "interrupted" and reopened.get(a)[0].state == "done"
    assert [r.id for r in reopened.list()] == [b, a]
