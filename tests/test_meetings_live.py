"""Live capture through a PulseAudio virtual microphone: real speech played into it, recorded and transcribed.

Skips (with the reason) where pulseaudio is not installed. The recorder is also checked to survive a kill:
the spool is a valid WAV missing at most the last second.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import soundfile

from audio_fixtures import speech_wav
from pulse_mic import PulseMic, PulseUnavailable


@pytest.fixture(scope="module")
def mic() -> PulseMic:
    try:
        m = PulseMic()
    except PulseUnavailable as exc:
        pytest.skip(str(exc))
    old = m.activate()  # daemons started from here (and recorders in children) inherit PULSE_SERVER
    yield m
    for k, v in old.items():
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)
    m.close()


def test_record_a_meeting_live_with_pause_resume_and_stop(mic: PulseMic, start_daemon, tmp_path_factory) -> None:
    speech = speech_wav(tmp_path_factory.mktemp("live"), 40)
    daemon = start_daemon()
    with daemon.client() as client:
        names = [d.name for d in client.audio_devices()]
        assert "pulse" in names or "default" in names
        player = mic.play(speech)
        stream = client.record_meeting(title="live test", summary=True, device="pulse")
        controller = daemon.client()
        timeline: list[str] = []
        growth: list[float] = []

        def recorded() -> float:
            return controller.control_meeting("status").recorded_seconds

        def wait_recorded(seconds: float) -> None:
            """Wait on the recorder's own count of audio heard, not on the wall clock."""
            deadline = time.monotonic() + 120
            while recorded() < seconds:
                assert time.monotonic() < deadline, f"the recorder never reached {seconds} s"
                threading.Event().wait(0.05)

        def control() -> None:
            wait_recorded(6.0)
            timeline.append(controller.control_meeting("pause").state)
            held = recorded()
            threading.Event().wait(2.0)  # a pause long enough that recording through it would show
            growth.append(recorded() - held)
            timeline.append(controller.control_meeting("resume").state)
            wait_recorded(17.0)
            timeline.append(controller.control_meeting("stop").state)

        thread = threading.Thread(target=control)
        thread.start()
        segments, final = [], None
        for event in stream:
            kind = event.WhichOneof("event")
            if kind == "segment":
                segments.append(event.segment)
            elif kind == "done":
                final = event.done
        thread.join()
        controller.close()
        player.kill()
        assert timeline == ["paused", "recording", "stopped"]
        assert final is not None and final.meeting_id
        assert growth[0] < 0.5  # nothing recorded while paused (at most the block in flight)
        # Stopped once 17 s were heard: 17 s recorded and transcribed, plus at most the blocks in flight.
        spooled = soundfile.info(final.audio_path)
        assert 17.0 <= spooled.duration < 19.0
        assert final.duration_seconds == pytest.approx(spooled.duration, abs=0.2)
        assert len(segments) >= 2 and segments[0].start_seconds == 0.0     # 15 s live clips
        for a, b in zip(segments, segments[1:]):
            assert a.end_seconds == pytest.approx(b.start_seconds)
        pcm, _ = soundfile.read(final.audio_path, dtype="float32")
        assert abs(pcm).max() > 0.05                                        # the speech was heard, not silence
        stored = client.meeting(final.meeting_id)
        assert len(stored.segments) == len(segments) and stored.audio_path == final.audio_path
        assert client.control_meeting("status").state == "none"


def test_a_killed_recorder_loses_at_most_the_last_second(mic: PulseMic, tmp_path: Path) -> None:
    spool = tmp_path / "spool.wav"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from omnid.modalities.recorder import Recorder
        r = Recorder(Path({str(spool)!r}), "pulse")
        print("started", flush=True)
        while True:
            time.sleep(0.05)
            print(r.recorded_seconds, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 4.0
    last = 0.0
    while time.monotonic() < deadline:
        last = float(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    info = soundfile.info(spool)                                        # a valid WAV after a SIGKILL
    assert info.samplerate == 16_000 and last - info.duration <= 1.0 + 0.2, (last, info.duration)
    assert info.duration > 2.0
