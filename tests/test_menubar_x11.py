"""The menubar as a person uses it: its icon in a real X tray (Debian's trayer on Xvfb), its menu opened and
its entries clicked with xdotool, against the real daemon on the tiny test model over its real socket.

pystray's X backend has no menus: a click on the icon pops up the menubar's Tk menu, and these tests click in
it (the entry's place comes from its label: the menubar logs each menu's labels as it opens it). What each
click did is checked through the daemon's own RPCs, and what the icon shows through its X window (its name
is the tooltip, its pixels the picture). Desktop notifications go to a stand-in notify-send that writes
down what it was asked to show (Xvfb has no notification server).
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import speech_wav
from documents_pdfs import make_report
from pulse_mic import PulseMic, PulseUnavailable
from screen_x11 import Xvfb, environment
from tray_x11 import Menubar, XTray, tray_missing, wait_for

from omnid.clients import menubar_icons as icons

pytestmark = pytest.mark.skipif(tray_missing() is not None, reason=tray_missing() or "")


@pytest.fixture(scope="module")
def tray():
    server = Xvfb(1024, 600)
    host = XTray(server.display)
    yield host
    host.close()
    server.close()


@pytest.fixture(scope="module")
def mic():
    try:
        m = PulseMic()
    except PulseUnavailable as exc:
        pytest.skip(str(exc))
    yield m
    m.close()


@pytest.fixture(scope="module")
def tray_daemon(start_daemon, tray, mic):
    """A daemon that sees the Xvfb screen and hears the PulseAudio virtual microphone."""
    with environment(DISPLAY=tray.display, WAYLAND_DISPLAY=None, PULSE_SERVER=mic.env["PULSE_SERVER"],
                     PULSE_RUNTIME_PATH=mic.env["PULSE_RUNTIME_PATH"]):
        return start_daemon()


@pytest.fixture(scope="module")
def notifications(tmp_path_factory) -> Path:
    """A notify-send on PATH that appends "title: body" lines to a file."""
    folder = tmp_path_factory.mktemp("notify")
    log = folder / "notifications.log"
    script = folder / "notify-send"
    script.write_text(f'#!/bin/sh\nshift\nprintf "%s: %s\\n" "$1" "$2" >> {log}\n')  # drops --app-name
    script.chmod(0o755)
    log.touch()
    return log


@pytest.fixture(scope="module")
def menubar(tray, tray_daemon, notifications, tmp_path_factory):
    bar = Menubar(tray, tmp_path_factory.mktemp("menubar") / "menubar.log", "--socket", str(tray_daemon.socket),
                  env={"PATH": f"{notifications.parent}:{os.environ['PATH']}"})
    yield bar
    bar.stop()
    print(bar.log())  # shown with a failure


def _icon_has(tray: XTray, color: tuple[int, int, int, int], at_least: int = 12) -> bool:
    """The icon on screen has this colour (the tray scales the 64-pixel picture to its 24x22 window)."""
    icon = tray.icon()
    if icon is None:
        return False
    pixels = np.asarray(tray.grab(icon)).astype(int)
    return int((np.abs(pixels - np.array(color[:3])).sum(axis=2) < 60).sum()) >= at_least


def test_the_icon_docks_in_the_x_tray_and_shows_the_daemon(tray, tray_daemon, menubar) -> None:
    wait_for("the icon's window", tray.icon, 30)
    wait_for("the icon docked inside trayer's panel (XEmbed)", tray.embedded, 30)
    model = tray_daemon.client().status().model_name
    title = wait_for("the tooltip to name the model", lambda: model in tray.title() and tray.title(), 30)
    assert title == f"omnid: {model}\nScreen watcher off"
    assert wait_for("a teal icon (running)", lambda: _icon_has(tray, icons.TEAL), 10)
    assert not _icon_has(tray, icons.RED)
    menu, labels, subs = menubar.open_menu()
    assert labels[0] == f"Model: {model}" and "Ask about my screen" in labels and labels[-1] == "Quit"
    assert menu.width > 100 and menu.height >= 20 * len(labels)
    assert any(label.startswith("pulse") for label in subs["Record from"])
    menubar.close_menu()


def test_the_screen_watcher_starts_and_pauses_from_the_menu(tray, tray_daemon, menubar) -> None:
    with tray_daemon.client() as client:
        wait_for("the menubar to see the daemon", lambda: "Screen watcher off" in tray.title(), 30)
        menubar.choose("Start the screen watcher")
        wait_for("the daemon's watcher to start", lambda: client.control_screen_watch("status").watching, 30)
        wait_for("the tooltip to say so", lambda: "Screen watcher on" in tray.title(), 30)
        menubar.choose("Pause the screen watcher")
        wait_for("the daemon's watcher to pause", lambda: client.control_screen_watch("status").paused, 30)
        wait_for("the tooltip to say so", lambda: "Screen watcher paused" in tray.title(), 30)
        client.stop_screen_watch()


def test_a_meeting_recorded_from_the_menu_from_the_virtual_microphone(tray, tray_daemon, menubar, mic,
                                                                      notifications, tmp_path) -> None:
    player = mic.play(speech_wav(tmp_path, 30))
    with tray_daemon.client() as client:
        before = {m.meeting_id for m in client.meetings()}
        menubar.choose("Record from", "pulse")
        wait_for("the daemon to record", lambda: client.control_meeting("status").state == "recording", 30)
        wait_for("4 s of audio", lambda: client.control_meeting("status").recorded_seconds >= 4.0, 60)
        wait_for("the tooltip to say so", lambda: "Meeting recording" in tray.title(), 30)
        assert wait_for("a red dot on the icon", lambda: _icon_has(tray, icons.RED), 10)
        labels = menubar.choose("Stop recording")
        assert not any(label.startswith("Start recording") for label in labels)
        wait_for("the recording to stop", lambda: client.control_meeting("status").state == "none", 30)
        wait_for("the summary's notification",
                 lambda: "omnid: meeting summary" in notifications.read_text(), 180)
        new = [m for m in client.meetings() if m.meeting_id not in before]
        assert len(new) == 1 and new[0].duration_seconds >= 4.0
        stored = client.meeting(new[0].meeting_id)
        assert stored.segments and stored.summary  # transcribed and summarised (random words: not checked)
    player.kill()
    wait_for("the tooltip to drop the meeting", lambda: "Meeting" not in tray.title(), 30)
    menubar.choose("Recent meetings", new[0].title)
    wait_for("the meeting's window", lambda: tray.search("--onlyvisible", "--name", "^omnid: meeting$"), 30)
    assert re.search(r"meeting: \d+ characters", menubar.log())


def test_ask_about_my_screen_from_the_menu(tray, tray_daemon, menubar, notifications) -> None:
    with tray_daemon.client() as client:
        cache = client.status().cache
        asked = cache.hits + cache.misses
        menubar.choose("Ask about my screen")
        window = wait_for("the answer's window", lambda: tray.search("--onlyvisible", "--name",
                                                                      "^omnid: about your screen$"), 30)
        assert window
        wait_for("the answer's notification", lambda: "omnid: your screen" in notifications.read_text(), 180)
        cache = client.status().cache
        assert cache.hits + cache.misses > asked  # the request reached the model
    assert re.search(r"screen: \d+ characters", menubar.log())


def _type_into(tray: XTray, title: str, typed: str, *, closes: bool = False) -> None:
    """Type into the window of this title once it shows, and press Return (no window manager: focus it first).

    closes: the window goes once it takes the text (Tk's file chooser). On a loaded machine keystrokes sent
    before Tk gave its entry the focus are lost, and the chooser then says the file does not exist and stays:
    the text is typed again over a selection of all of it (Tk's Control-slash), up to three times."""
    def shown() -> list:
        return tray.search("--onlyvisible", "--name", f"^{title}$")
    found = wait_for(f"the window {title!r}", shown, 30)
    assert isinstance(found, list)
    for _ in range(3):
        time.sleep(0.5)  # Tk gives its entry the focus once the window is drawn; typing before that is lost
        tray.x("xdotool", "windowfocus", "--sync", found[0].id)
        tray.x("xdotool", "key", "ctrl+slash")
        tray.x("xdotool", "type", "--delay", "20", typed)
        tray.x("xdotool", "key", "Return")
        if not closes:
            return
        try:
            wait_for(f"the window {title!r} to take the text", lambda: not shown(), 10)
            return
        except AssertionError:
            tray.x("xdotool", "key", "Return")  # the "does not exist" box over the chooser: its OK
    raise AssertionError(f"the window {title!r} did not take {typed!r} in three tries")


def test_ask_in_a_window_of_its_own_without_the_web_page(tray, tray_daemon, menubar) -> None:
    with tray_daemon.client() as client:
        cache = client.status().cache
        asked = cache.hits + cache.misses
        menubar.choose("Ask…")
        _type_into(tray, "omnid: Ask", "What is a warm model?")
        wait_for("the answer's window", lambda: tray.search("--onlyvisible", "--name", "^omnid: answer$"), 30)
        wait_for("the whole answer", lambda: re.search(r"answer: \d+ characters", menubar.log()), 180)
        cache = client.status().cache
        assert cache.hits + cache.misses > asked


def test_add_a_pdf_with_the_file_chooser(tray, tray_daemon, menubar, notifications, tmp_path) -> None:
    pdf = tmp_path / "handbook.pdf"
    pdf.write_bytes(make_report(4, lines=3))
    menubar.choose("Documents", "Add a PDF")
    _type_into(tray, "omnid: add a PDF", str(pdf), closes=True)
    wait_for("the ingest's notification", lambda: "omnid: document ready: handbook.pdf: 4 pages"
             in notifications.read_text(), 180)
    with tray_daemon.client() as client:
        assert "handbook.pdf" in [d.name for d in client.list_documents()]
    _, _, subs = menubar.open_menu()
    menubar.close_menu()
    assert any(label.startswith("Ask handbook.pdf (4 pages)") for label in subs["Documents"])


def test_search_the_history_from_the_menu(tray, tray_daemon, menubar) -> None:
    menubar.choose("Open history search")
    _type_into(tray, "omnid: search history", "meeting")
    wait_for("the results' window", lambda: tray.search("--onlyvisible", "--name", "^omnid: search for meeting$"), 30)
    assert re.search(r"search: \d+ characters", menubar.log())


def test_quit_leaves_the_tray_and_the_daemon_running(tray, tray_daemon, menubar) -> None:
    wait_for("the menubar to see the daemon", lambda: "omnid: tiny-omni" in tray.title(), 30)
    menubar.choose("Quit")
    assert wait_for("the menubar to exit", lambda: menubar.proc.poll() is not None, 30) is not None
    assert menubar.proc.returncode == 0, menubar.log()
    wait_for("the icon to leave the tray", lambda: tray.icon() is None, 10)
    with tray_daemon.client() as client:
        assert client.status().model_name


def test_start_the_daemon_from_the_menu(tray, test_model, tmp_path) -> None:
    socket = tmp_path / "run" / "omnid.sock"
    serve_args = tmp_path / "serve.args"
    serve_args.write_text(f"# what the user keeps in ~/.config/omnid/serve.args\n--model {test_model.text}\n"
                          f"--mmproj {test_model.mmproj}\n--threads 1 --ctx 4096 --cache-disk off\n"
                          f"--data-dir {tmp_path / 'data'}\n")
    bar = Menubar(tray, tmp_path / "menubar.log", "--socket", str(socket), "--serve-args", str(serve_args),
                  env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    pid = 0
    try:
        try:
            wait_for("the tooltip to say it is not running", lambda: tray.title() == "omnid: not running", 30)
        except AssertionError as exc:  # say what the tray and the menubar show
            raise AssertionError(f"{exc}; the tray's icon: {tray.title()!r}; the menubar's log:\n{bar.log()}") from None
        labels = bar.choose("Start the daemon")
        assert labels == ["omnid is not running", "Start the daemon", "Quit"]
        started = wait_for("the daemon's pid in the log", lambda: re.search(r"started omnid serve \(pid (\d+)\)",
                                                                             bar.log()), 30)
        assert isinstance(started, re.Match)
        pid = int(started.group(1))
        wait_for("the daemon to answer", lambda: tray.title().startswith("omnid: tiny-omni"), 120)
        assert (tmp_path / "cache" / "omnid" / "omnid-serve.log").exists()
    finally:
        bar.stop()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
