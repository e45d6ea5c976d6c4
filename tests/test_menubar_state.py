"""What the menubar shows for a daemon's state, without a display: the menu, the tooltip, the icon's look and
picture, and the view read from the real daemon on the tiny test model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omnid.clients import menubar_icons as icons
from omnid.clients import menubar_state as st
from omnid.clients.menubar_actions import read_serve_args
from omnid.proto import omnid_pb2 as pb

RUNNING = st.DaemonView(running=True, model="tiny", model_loaded=True, can_see=True, can_hear=True,
                        devices=(st.Device("default", True), st.Device("pulse")))


def labels(menu: st.Menu) -> list[str]:
    return [e.label for e in menu]


def test_a_daemon_that_is_not_running_offers_to_start_it() -> None:
    menu = st.menu(st.DaemonView())
    assert labels(menu) == ["omnid is not running", "Start the daemon", "Quit"]
    assert menu[0].is_info and menu[1].action == st.START_DAEMON and menu[1].enabled
    starting = st.menu(st.DaemonView(starting=True))
    assert starting[0].label == "omnid is starting…" and not st.find(starting, st.START_DAEMON).enabled
    assert st.tooltip(st.DaemonView(error="UNAVAILABLE: x")) == "omnid: not running\nUNAVAILABLE: x"
    looking = st.DaemonView(looking=True)  # before the first look: no "Start the daemon" (one may be running)
    assert labels(st.menu(looking)) == ["Looking for the daemon…", "Quit"]
    assert st.tooltip(looking) == "omnid: looking for the daemon…" and not st.icon_look(looking).running


def test_a_running_daemon_offers_everything() -> None:
    menu = st.menu(RUNNING)
    assert labels(menu) == ["Model: tiny", "Ask…", "Ask about my screen", "Start recording a meeting", "Record from",
                            "Start the screen watcher", "Recent meetings", "Documents", "Open history search…",
                            "Quit"]
    assert labels(menu[4].children) == ["default (default)", "pulse"]
    assert st.find(menu, st.RECORD, "pulse").arg == "pulse"
    assert labels(menu[7].children) == ["Add a PDF…"] and menu[7].children[0].action == st.ADD_DOCUMENT
    assert menu[6].children[0].is_info  # "No meetings yet"
    assert st.tooltip(RUNNING) == "omnid: tiny\nScreen watcher off"


def test_recording_and_the_watcher_change_the_menu_tooltip_and_icon() -> None:
    view = st.DaemonView(**{**RUNNING.__dict__, "meeting_state": "recording", "recorded_seconds": 75.0,
                            "watcher": "on", "progress": ("Meeting: 4 segments, 1:00",)})
    menu = st.menu(view)
    assert "Stop recording (1:15)" in labels(menu) and st.find(menu, st.RECORD) is None
    assert "Pause the screen watcher" in labels(menu) and "Meeting: 4 segments, 1:00" in labels(menu)
    assert st.tooltip(view).splitlines() == ["omnid: tiny", "Meeting recording: 1:15", "Screen watcher on",
                                             "Meeting: 4 segments, 1:00"]
    look = st.icon_look(view)
    assert look.recording and look.watching and look.working
    paused = st.DaemonView(**{**RUNNING.__dict__, "watcher": "paused", "meeting_state": "paused"})
    assert "Resume the screen watcher" in labels(st.menu(paused))
    assert st.icon_look(paused).paused_recording and not st.icon_look(paused).recording


def test_a_model_that_cannot_see_or_hear_greys_those_entries_out() -> None:
    deaf = st.DaemonView(running=True, model="text", devices=(st.Device("a"), st.Device("b")))
    menu = st.menu(deaf)
    assert not st.find(menu, st.ASK_SCREEN).enabled and not st.find(menu, st.RECORD).enabled
    assert not st.find(menu, st.START_WATCHER).enabled and "Record from" not in labels(menu)
    assert st.tooltip(deaf).startswith("omnid: text (not loaded)")


def _pixels(look: st.IconLook, color: tuple[int, int, int, int]) -> int:
    return int((np.asarray(icons.draw(look)) == color).all(axis=2).sum())


def test_each_state_draws_a_different_icon() -> None:
    looks = [st.IconLook(False), st.IconLook(True, True), st.IconLook(True, False), st.IconLook(True, True, True),
             st.IconLook(True, True, watching=True), st.IconLook(True, True, working=True)]
    pictures = {icons.draw(look).tobytes() for look in looks}
    assert len(pictures) == len(looks)
    assert _pixels(looks[0], icons.TEAL) == 0 and _pixels(looks[1], icons.TEAL) > 1000
    assert _pixels(looks[3], icons.RED) > 100 and _pixels(looks[1], icons.RED) == 0
    assert icons.draw(looks[0]).size == (icons.SIZE, icons.SIZE) and icons.draw(looks[0]).mode == "RGBA"


def test_the_web_page_is_offered_only_when_the_daemon_reports_one() -> None:
    status = pb.StatusReply(model_name="x")
    expected = getattr(status, "http_url", "") if "http_url" in status.DESCRIPTOR.fields_by_name else ""
    assert st.http_url(status) == expected == ""


def test_serve_args_are_shell_words_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "serve.args"
    assert read_serve_args(path) == []
    path.write_text("# my model\n--model '/models/my model.gguf'\n--ctx 8192  # enough\n")
    assert read_serve_args(path) == ["--model", "/models/my model.gguf", "--ctx", "8192"]


def test_the_view_of_the_real_daemon(client) -> None:
    view = st.read_view(client)
    status = client.status()
    assert view.running and view.model == status.model_name and view.can_see and view.can_hear
    assert view.meeting_state == "none" and view.watcher == "off" and not view.recording
    assert all(isinstance(d, st.Device) for d in view.devices)
    assert st.read_view(client, lists=st.Lists()).devices == ()  # lists read before are reused
    assert st.read_lists(client, can_hear=True) == view.lists
    assert st.tooltip(view).startswith(f"omnid: {status.model_name}")
