"""The menubar's controller without a display: what its actions do through the client library against the real
daemon on the tiny test model, the views it publishes while they run, and the notifications they raise."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest

from documents_pdfs import make_report

from omnid.clients import menubar_actions
from omnid.clients import menubar_state as st
from omnid.clients.menubar_actions import Controller, Settings


class Recorder:
    """The UI's side: every view published and every notification raised."""

    def __init__(self) -> None:
        self.views: list[st.DaemonView] = []
        self.notes: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def view(self, view: st.DaemonView) -> None:
        with self.lock:
            self.views.append(view)

    def notify(self, title: str, body: str) -> None:
        with self.lock:
            self.notes.append((title, body))


@pytest.fixture
def ui(monkeypatch) -> Recorder:
    monkeypatch.delenv("DISPLAY", raising=False)  # no windows: the dialogs say they are unavailable
    return Recorder()


def controller_for(daemon, ui: Recorder, **settings) -> Controller:
    return Controller(Settings(socket=str(daemon.socket), poll_seconds=0.2, **settings), ui.view, ui.notify)


def test_it_polls_the_daemon_and_publishes_what_changed(daemon, ui: Recorder) -> None:
    controller = controller_for(daemon, ui)
    controller.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if ui.views and ui.views[-1].running:
                break
            deadline.wait(0.1)
        assert ui.views[-1].running and ui.views[-1].model == daemon.client().status().model_name
        count = len(ui.views)
        deadline.wait(1.0)  # five more polls of an unchanged daemon publish nothing
        assert len(ui.views) == count
    finally:
        controller.close()


def test_a_pdf_added_from_the_menu_shows_its_progress_and_raises_a_notification(daemon, ui: Recorder,
                                                                               tmp_path) -> None:
    pdf = tmp_path / "quarterly.pdf"
    pdf.write_bytes(make_report(6, lines=3))
    controller = controller_for(daemon, ui)
    controller.run(st.ADD_DOCUMENT, str(pdf)).join(300)
    lines = [line for view in ui.views for line in view.progress]
    assert any(re.fullmatch(r"quarterly\.pdf: \d+/6 pages \(\w+\)", line) for line in lines), lines
    assert ui.views[-1].progress == ()  # done: the line is gone
    assert ui.notes[-1][0] == "omnid: document ready" and "quarterly.pdf: 6 pages" in ui.notes[-1][1]
    view = st.read_view(daemon.client())
    assert any(item.label.startswith("quarterly.pdf (6 pages)") for item in view.documents)
    entry = st.find(st.menu(view), st.ASK_DOCUMENT)
    assert entry is not None and entry.label.startswith("Ask quarterly.pdf")
    controller.close()


def test_ask_opens_the_daemons_web_page_when_it_has_one(daemon, ui: Recorder, monkeypatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(menubar_actions.webbrowser, "open", opened.append)
    controller = controller_for(daemon, ui)
    controller._publish(st.DaemonView(running=True, http_url="http://127.0.0.1:8765/"))
    controller.run(st.ASK).join(30)
    assert opened == ["http://127.0.0.1:8765/"] and ui.notes == []
    controller.close()


def test_without_a_web_page_or_windows_ask_says_it_is_unavailable(daemon, ui: Recorder) -> None:
    controller = controller_for(daemon, ui)
    controller._publish(st.DaemonView(running=True))
    controller.run(st.ASK).join(30)
    assert len(ui.notes) == 1 and "needs a window" in ui.notes[0][1]
    controller.close()


def test_a_refusal_is_a_notification_not_a_crash(daemon, ui: Recorder) -> None:
    controller = controller_for(daemon, ui)
    controller.run(st.PAUSE_WATCHER).join(30)  # nothing is watching: the daemon refuses
    assert len(ui.notes) == 1 and ui.notes[0][0] == "omnid" and ui.notes[0][1]
    controller.run(st.SHOW_MEETING, "ffffffff").join(30)
    assert len(ui.notes) == 2 and "ffffffff" in ui.notes[1][1]
    controller.close()


def test_with_no_daemon_the_view_offers_to_start_one(tmp_path, ui: Recorder) -> None:
    controller = Controller(Settings(socket=str(tmp_path / "none" / "omnid.sock")), ui.view, ui.notify)
    view = controller._look()
    assert not view.running and st.find(st.menu(view), st.START_DAEMON) is not None
    controller.run(st.RECORD).join(30)
    assert ui.notes and "not running" in ui.notes[-1][1]


@pytest.mark.parametrize("command", [["omnid.clients.menubar"], ["omnid.clients.cli", "menubar"]])
def test_without_a_display_both_commands_say_so_in_one_line(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "omnid-menubar: no tray to show an icon in: no display (DISPLAY is not set)\n"
