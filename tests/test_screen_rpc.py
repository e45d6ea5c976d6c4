"""The screen RPCs end to end: a real daemon on the tiny random-weight omni model, on a real X screen.

Random weights say nothing meaningful, so these tests assert on structure, counters, token counts and
status codes, never on wording.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from screen_x11 import TkWindow, Xvfb, environment, xvfb_missing

from omnid.clients.client import text
from omnid.proto import omnid_pb2 as pb

pytestmark = pytest.mark.skipif(xvfb_missing() is not None, reason=xvfb_missing() or "")


@pytest.fixture(scope="module")
def xvfb():
    server = Xvfb(800, 600)
    yield server
    server.close()


def _daemon_with_env(start_daemon, display: str | None, **kwargs):
    """Start a daemon whose environment has DISPLAY=display (or none)."""
    with environment(DISPLAY=display or None, WAYLAND_DISPLAY=None):
        return start_daemon(**kwargs)


@pytest.fixture(scope="module")
def screen_daemon(start_daemon, xvfb):
    return _daemon_with_env(start_daemon, xvfb.display)


@pytest.fixture
def screen_client(screen_daemon):
    with screen_daemon.client() as c:
        yield c
        if c.control_screen_watch("status").watching:
            c.stop_screen_watch()


@pytest.fixture
def window(xvfb):
    opened: list[TkWindow] = []

    def open_window(*args, **kwargs) -> TkWindow:
        w = TkWindow(xvfb.display, *args, **kwargs)
        opened.append(w)
        return w
    yield open_window
    for w in opened:
        w.close()


def final_of(events) -> pb.Final:
    finals = [e.done for e in events if e.WhichOneof("event") == "done"]
    assert len(finals) == 1
    return finals[0]


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out waiting")


def test_screen_once_end_to_end_and_from_the_cli(screen_daemon, screen_client, window):
    window("Report", "400x300+50+50", "#3060a0")
    done = final_of(screen_client.screen_once(max_tokens=6))
    assert done.usage.prompt_tokens > 20 and 1 <= done.usage.generated_tokens <= 6
    # The screen's system text is shared by every frame through the prompt cache; the frame is not.
    again = final_of(screen_client.screen_once(prompt="Which application is this?", max_tokens=2))
    assert 0 < again.usage.cached_tokens < again.usage.prompt_tokens
    out = subprocess.run([sys.executable, "-m", "omnid.clients.cli", "--socket", str(screen_daemon.socket),
                          "screen", "once", "--json", "--max-tokens", "4"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["usage"]["prompt_tokens"] > 20 and reply["monitor"] == 1


def test_generate_takes_a_screen_part(screen_client, window):
    window("Chart", "300x200+10+10", "#a03060")
    with_screen = screen_client.ask(pb.Part(screen=pb.ScreenRef(monitor=1)), text("What is this?"), max_tokens=2)
    without = screen_client.ask(text("What is this?"), max_tokens=2)
    assert with_screen.usage.prompt_tokens > without.usage.prompt_tokens + 10


def test_watch_sends_changed_frames_only_and_keeps_a_searchable_history(screen_client, window):
    win = window("Notes", "500x400+100+100", "#2040c0")
    win.focus()  # observations name the focused window
    events: list[pb.ScreenEvent] = []
    stream = screen_client.watch_screen()

    def read() -> None:
        try:
            for e in stream:
                events.append(e)
        except grpc.RpcError as exc:  # cancelled at the end of the test
            assert exc.code() == grpc.StatusCode.CANCELLED
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        state = screen_client.start_screen_watch(interval=0.1, monitor=1)
        assert state.watching and state.interval_seconds == pytest.approx(0.1)

        def observations():
            return [e.observation for e in events if e.WhichOneof("event") == "observation"]
        wait_for(lambda: len(observations()) >= 1)
        # A static screen: frames keep being grabbed (however slowly this machine grabs them), none goes to
        # the model.
        before = screen_client.control_screen_watch("status")
        after = wait_for(lambda: (lambda s: s if s.frames_grabbed >= before.frames_grabbed + 5 else None)(
            screen_client.control_screen_watch("status")))
        assert after.frames_sent == before.frames_sent == 1
        assert after.frames_unchanged > before.frames_unchanged
        # A change reaches the model once.
        win.color("#20c040")
        wait_for(lambda: len(observations()) >= 2)
        first = observations()[0]
        assert (first.app, first.window) == ("Tk", "Notes")
        assert first.monitor == 1 and first.id and abs(first.time_unix - time.time()) < 60
        # Pause: no grabs at all (but the one under way when pause() came).
        paused = screen_client.control_screen_watch("pause")
        assert paused.paused
        threading.Event().wait(5 * 0.1)  # five periods in which ticks would have run
        assert screen_client.control_screen_watch("status").frames_grabbed <= paused.frames_grabbed + 1
        assert not screen_client.control_screen_watch("resume").paused
        stopped = screen_client.stop_screen_watch()
        assert not stopped.watching and stopped.frames_sent >= 2
    finally:
        stream.cancel()
    assert any(e.WhichOneof("event") == "state" for e in events)
    found = screen_client.search_screen("", limit=50, since=time.time() - 120)
    assert len(found) >= 2 and found[0].time_unix >= found[-1].time_unix
    assert {o.id for o in found} >= {o.id for o in observations()}
    done = final_of(screen_client.ask_screen("What was I looking at?", since=time.time() - 120, max_tokens=4))
    assert done.usage.prompt_tokens > 20


def test_excluded_windows_never_reach_the_model(screen_client, window):
    window("Bank - Mozilla Firefox Private Browsing", "800x600+0+0", "#ff00ff")
    with pytest.raises(grpc.RpcError) as err:
        final_of(screen_client.screen_once(max_tokens=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "excluded windows cover" in err.value.details()
    state = screen_client.start_screen_watch(interval=0.1, monitor=1, exclude=["notes-app"])
    assert "app/window: notes-app" in state.exclusions
    # The first frame is dropped as excluded; the identical ones after it are skipped before any look.
    wait_for(lambda: screen_client.control_screen_watch("status").frames_grabbed >= 5)
    stopped = screen_client.stop_screen_watch()
    assert stopped.frames_excluded >= 1 and stopped.frames_sent == 0


def test_bad_requests_get_clear_statuses(screen_client):
    with pytest.raises(grpc.RpcError) as err:
        screen_client.control_screen_watch("explode")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        screen_client.start_screen_watch(interval=0.001)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        screen_client.start_screen_watch(monitor=9)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no monitor 9" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        screen_client.control_screen_watch("pause")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        final_of(screen_client.ask_screen(""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_display_and_no_vision_are_failed_preconditions(start_daemon, xvfb, test_model):
    blind = _daemon_with_env(start_daemon, None)
    with blind.client() as c:
        for call in (lambda: c.start_screen_watch(), lambda: final_of(c.screen_once())):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "DISPLAY" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            final_of(c.ask_screen("what was on screen?"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    text_only = _daemon_with_env(start_daemon, xvfb.display, mmproj="")
    with text_only.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.start_screen_watch()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "vision" in err.value.details()


def test_cli_says_when_a_watch_replaces_the_running_one(screen_daemon):
    cli = [sys.executable, "-m", "omnid.clients.cli", "--socket", str(screen_daemon.socket), "screen"]
    run = lambda *args: subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)  # noqa: E731
    first = run("watch", "--detach", "--interval", "0.5")
    assert first.returncode == 0 and "replaced" not in first.stderr, first.stderr
    second = run("watch", "--detach", "--interval", "2")
    assert second.returncode == 0
    assert "replaced the running watcher (monitor 1 every 0.5 s) with monitor 1 every 2 s" in second.stderr
    assert run("stop").returncode == 0
    again = run("stop")  # nothing to stop: the same answer as `screen pause` when not watching
    assert again.returncode == 1 and again.stderr.startswith("omni: FAILED_PRECONDITION")
