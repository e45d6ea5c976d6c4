"""The menubar's controller: it watches the daemon and runs what the menu's entries ask, off the UI thread.

It talks to the daemon only through the public client library (clients/client.py), polls it every few
seconds (Status, the meeting and screen watcher states, the newest meetings and documents) and hands each
changed DaemonView to the UI. Every action runs in a thread of its own, so a 20-minute transcription or a
PDF ingest never freezes the menu; their progress is part of the view.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import webbrowser
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable, Iterable

from omnid.clients import menubar_dialogs as dialogs
from omnid.clients import menubar_state as st
from omnid.clients.client import DaemonNotRunning, OmniClient, OmniError, connect, text
from omnid.common.paths import default_token_path

log = logging.getLogger("omnid.menubar")

Notify = Callable[[str, str], None]
#: Every this many polls the submenus' lists are read again (a microphone plugged in, a meeting another client
#: recorded); after one of the menubar's own actions at once.
LIST_REFRESH_POLLS = 15
SCREEN_PROMPT = "Describe what is on my screen and what I seem to be doing."


def default_serve_args_path() -> Path:
    """Where the user keeps the flags "Start the daemon" passes to `omnid serve` (next to the TCP token)."""
    return default_token_path().parent / "serve.args"


def read_serve_args(path: Path) -> list[str]:
    """The flags in a serve.args file (shell words, `#` comments, any number of lines); none if it is missing."""
    try:
        return shlex.split(path.read_text(), comments=True)
    except FileNotFoundError:
        return []


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "omnid"


def omnid_command() -> list[str]:
    """How to run `omnid`: the script installed next to this Python, else the one on PATH, else the module."""
    beside = Path(sys.executable).with_name("omnid")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("omnid")
    return [found] if found else [sys.executable, "-m", "omnid.daemon"]


def desktop_notify(title: str, body: str) -> bool:
    """A desktop notification through notify-send (freedesktop), where it is installed; False otherwise."""
    tool = shutil.which("notify-send")
    if tool is None:
        return False
    try:
        subprocess.run([tool, "--app-name=omnid", title, body[:1000]], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return True


def add_menubar_flags(parser: argparse.ArgumentParser) -> None:
    """The menubar's own flags (`omnid-menubar` and `omni menubar`; the connection flags come with each)."""
    parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                        help="how often to look at the daemon (default: 2)")
    parser.add_argument("--serve-args", type=Path, default=None, metavar="FILE",
                        help=f"the flags “Start the daemon” gives `omnid serve` (default: {default_serve_args_path()})")
    parser.add_argument("--no-summary", action="store_true",
                        help="meetings recorded from the menu end without a summary")


@dataclass
class Settings:
    socket: str | None = None
    tcp: str | None = None
    token_file: str | None = None
    poll_seconds: float = 2.0
    summary: bool = True                       # meetings recorded from the menu end with a summary
    serve_args: list[str] = field(default_factory=list)
    serve_log: Path = field(default_factory=lambda: _cache_dir() / "omnid-serve.log")


class Controller:
    def __init__(self, settings: Settings, on_change: Callable[[st.DaemonView], None], notify: Notify) -> None:
        self.settings = settings
        self.on_change = on_change
        self.notify = notify
        self._lock = threading.Lock()
        self._client: OmniClient | None = None
        self._view = st.DaemonView(looking=True)
        self._progress = st.Progress()
        self._lists: st.Lists | None = None
        self._lists_wanted = True
        self._polls = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._starting: subprocess.Popen | None = None
        self._recording: threading.Thread | None = None
        self._poller = threading.Thread(target=self._poll_loop, name="omnid-menubar-poll", daemon=True)

    # -- the view ------------------------------------------------------------------------------------------

    @property
    def view(self) -> st.DaemonView:
        with self._lock:
            return self._view

    def start(self) -> None:
        self._poller.start()

    def refresh(self, lists: bool = False) -> None:
        """Look at the daemon again now, not at the next poll (with lists: the submenus' lists too)."""
        if lists:
            with self._lock:
                self._lists_wanted = True
        self._wake.set()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._publish(self._look())
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _look(self) -> st.DaemonView:
        try:
            client = self._connected()
            with self._lock:
                fresh = self._lists_wanted or self._polls % LIST_REFRESH_POLLS == 0
                self._lists_wanted = False
            self._polls += 1
            view = st.read_view(client, None if fresh else self._lists)
            self._lists = view.lists
            self._starting = None
            return view
        except DaemonNotRunning:
            return self._not_running("")
        except OmniError as exc:
            self._drop_client()
            return self._not_running(f"{exc.code().name}: {exc.details()}")
        except (OSError, ValueError) as exc:  # an unsafe socket folder, an unreadable token file
            return self._not_running(str(exc))

    def _not_running(self, error: str) -> st.DaemonView:
        self._drop_client()
        with self._lock:
            self._lists_wanted = True  # a daemon that comes back may have other meetings and documents
        starting = self._starting is not None and self._starting.poll() is None
        if self._starting is not None and not starting:
            error = (f"omnid serve exited with code {self._starting.returncode}; see {self.settings.serve_log}")
        return st.DaemonView(running=False, starting=starting, error=error)

    def _publish(self, view: st.DaemonView) -> None:
        with self._lock:
            view = view.with_progress(self._progress.snapshot())
            changed = view != self._view
            self._view = view
        if changed:
            try:
                self.on_change(view)
            except Exception:  # a UI that cannot draw this view must not end the work that published it
                log.exception("the tray could not show the new state")

    def _set_progress(self, key: str, line: str | None) -> None:
        with self._lock:
            if line is None:
                self._progress.done(key)
            else:
                self._progress.set(key, line)
            view = self._view
        self._publish(view)

    def _connected(self) -> OmniClient:
        with self._lock:
            client = self._client
        if client is None:
            s = self.settings
            client = connect(s.socket, s.tcp, s.token_file)
            with self._lock:
                self._client = client
        return client

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- actions -------------------------------------------------------------------------------------------

    def run(self, action: str, arg: str = "") -> threading.Thread | None:
        """Run a menu entry's action in its own thread (Quit: at once, here); returns the thread."""
        if action == st.QUIT:
            self.close()
            return None
        handlers: dict[str, Callable[[str], None]] = {
            st.ASK: self._ask, st.ASK_SCREEN: self._ask_screen, st.RECORD: self._record,
            st.STOP_RECORDING: lambda _: self._call(lambda c: c.control_meeting("stop"), "Stop recording"),
            st.PAUSE_WATCHER: lambda _: self._call(lambda c: c.control_screen_watch("pause"), "Pause"),
            st.RESUME_WATCHER: lambda _: self._call(lambda c: c.control_screen_watch("resume"), "Resume"),
            st.START_WATCHER: lambda _: self._call(lambda c: c.start_screen_watch(), "Screen watcher"),
            st.SHOW_MEETING: self._show_meeting, st.ADD_DOCUMENT: self._add_document,
            st.ASK_DOCUMENT: self._ask_document, st.SEARCH_HISTORY: self._search, st.START_DAEMON: self._start_daemon,
        }
        handler = handlers[action]
        if action == st.RECORD:
            if self._recording is not None and self._recording.is_alive():
                return self._recording
        thread = threading.Thread(target=self._guarded, args=(handler, arg, action), name=f"omnid-menubar-{action}",
                                  daemon=True)
        if action == st.RECORD:
            self._recording = thread
        thread.start()
        return thread

    def _guarded(self, handler: Callable[[str], None], arg: str, action: str) -> None:
        """One action; a refusal or a failure is said in a notification, never raised into the UI."""
        log.info("action: %s %s", action, arg)
        try:
            handler(arg)
        except DaemonNotRunning:
            self.notify("omnid", "The daemon is not running (use “Start the daemon”).")
        except OmniError as exc:
            log.warning("%s: %s", action, exc)
            self.notify("omnid", f"{exc.details()}")
        except OSError as exc:
            log.warning("%s: %s", action, exc)
            self.notify("omnid", str(exc))
        except Exception as exc:  # a bug here must not pass silently, nor take the tray down
            log.exception("%s failed", action)
            self.notify("omnid", f"{action} failed: {exc}")
        finally:
            self.refresh(lists=True)

    def _call(self, call: Callable[[OmniClient], object], what: str) -> None:
        call(self._connected())
        log.info("%s: done", what)

    def _ask(self, _: str) -> None:
        url = st.ask_url(self._connected(), self.view) if self.view.http_url else ""
        if url:
            webbrowser.open(url)
            return
        question = dialogs.ask("omnid: Ask", "Ask the model:")
        if question is None:
            if not dialogs.dialogs_available():
                self.notify("omnid", "Ask… needs a window (Tk) or the daemon's web page; neither is available here.")
            return
        client = self._connected()
        self._stream_to_window("omnid: answer", (e.delta for e in client.generate(text(question))
                                                 if e.WhichOneof("event") == "delta"), "answer")

    def _ask_screen(self, _: str) -> None:
        client = self._connected()
        self._set_progress("screen", "Looking at the screen…")
        try:
            answer = self._stream_to_window(
                "omnid: about your screen",
                (e.delta for e in client.screen_once(prompt=SCREEN_PROMPT) if e.WhichOneof("event") == "delta"),
                "screen")
        finally:
            self._set_progress("screen", None)
        self.notify("omnid: your screen", answer.strip() or "(no answer)")

    def _stream_to_window(self, title: str, pieces: Iterable[str], what: str) -> str:
        """Write an answer's pieces into a text window as they come; returns the whole answer."""
        window: IO[str] | None = dialogs.show(title)
        got: list[str] = []
        try:
            for piece in pieces:
                got.append(piece)
                if window is not None:
                    try:
                        window.write(piece)
                        window.flush()
                    except (BrokenPipeError, ValueError):  # the window was closed: keep reading the answer
                        window = None
        finally:
            if window is not None:
                try:
                    window.close()
                except BrokenPipeError:
                    pass
        answer = "".join(got)
        log.info("%s: %d characters", what, len(answer))
        return answer

    def _record(self, device: str) -> None:
        client = self._connected()
        self._set_progress("meeting", "Meeting: starting…")
        segments, final = 0, None
        try:
            for event in client.record_meeting(device=device, summary=self.settings.summary):
                kind = event.WhichOneof("event")
                if kind == "segment":
                    segments += 1
                    heard = st.clock(event.segment.end_seconds)
                    self._set_progress("meeting", f"Meeting: {segments} segments, {heard}")
                elif kind == "progress":
                    p = event.progress
                    self._set_progress("meeting", f"Meeting {p.state}: {st.clock(p.audio_seconds_done)}, "
                                                  f"{segments} segments")
                    self.refresh()
                elif kind == "done":
                    final = event.done
        finally:
            self._set_progress("meeting", None)
        if final is None:
            return
        log.info("meeting %s: %d segments, %.1f s", final.meeting_id, len(final.segments), final.duration_seconds)
        body = final.summary.strip() or f"{len(final.segments)} segments, {st.clock(final.duration_seconds)}"
        self.notify("omnid: meeting summary", body)

    def _show_meeting(self, meeting_id: str) -> None:
        meeting = self._connected().meeting(meeting_id)
        lines = [f"Meeting {meeting.meeting_id[:8]} ({st.clock(meeting.duration_seconds)})", ""]
        if meeting.summary:
            lines += ["Summary:", meeting.summary, ""]
        lines += [f"[{st.clock(s.start_seconds)}] {s.text}" for s in meeting.segments]
        self._stream_to_window("omnid: meeting", ["\n".join(lines) + "\n"], "meeting")

    def _add_document(self, path: str) -> None:
        """Ingest a PDF (the file chooser's, or one named by whoever runs the action), its pages as progress."""
        path = path or dialogs.choose_pdf() or ""
        if not path:
            if not dialogs.dialogs_available():
                self.notify("omnid", "Adding a PDF needs a file chooser (Tk): use `omni doc ingest FILE`.")
            return
        name = Path(path).name
        client = self._connected()
        self._set_progress("ingest", f"{name}: reading…")
        try:
            info = client.ingest_document(path, progress=lambda p: self._set_progress(
                "ingest", f"{name}: {p.pages_done}/{p.pages_total} pages ({p.stage})"))
        finally:
            self._set_progress("ingest", None)
        self.notify("omnid: document ready", f"{info.name}: {info.page_count} pages, {info.total_tokens} tokens")

    def _ask_document(self, document_id: str) -> None:
        question = dialogs.ask("omnid: ask the document", "Ask about the document:")
        if question is None:
            return
        events = self._connected().ask_document(document_id, question)
        self._stream_to_window("omnid: answer", (e.delta for e in events if e.WhichOneof("event") == "delta"),
                               "document answer")

    def _search(self, _: str) -> None:
        query = dialogs.ask("omnid: search history", "Search the screen history and meetings for:")
        if query is None:
            return
        client = self._connected()
        frames = client.search_screen(query, limit=20)
        meetings = client.meetings(query, limit=10)
        lines = [f"Screen ({len(frames)}):"]
        lines += [f"  {time.strftime('%Y-%m-%d %H:%M', time.localtime(o.time_unix))} {o.app or o.window}: {o.text}"
                  for o in frames]
        lines += ["", f"Meetings ({len(meetings)}):"]
        lines += [f"  {m.title} ({m.meeting_id[:8]}): {m.snippet}" for m in meetings]
        self._stream_to_window(f"omnid: search for {query}", ["\n".join(lines) + "\n"], "search")

    def _start_daemon(self, _: str) -> None:
        s = self.settings
        command = [*omnid_command(), "serve", *s.serve_args]
        if s.socket and "--socket" not in s.serve_args:
            command += ["--socket", s.socket]
        s.serve_log.parent.mkdir(parents=True, exist_ok=True)
        with open(s.serve_log, "ab") as out:
            # A session of its own: the daemon outlives the menubar (Quit leaves it running).
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True)
        self._starting = process
        log.info("started omnid serve (pid %d): %s; its log: %s", process.pid, shlex.join(command), s.serve_log)
        self._publish(replace(self.view, starting=True, error=""))

    # -- the end -------------------------------------------------------------------------------------------

    def close(self, recording_patience: float = 30.0) -> None:
        """Stop polling; a meeting this menubar records is stopped first and its transcript finished."""
        self._stop.set()
        self._wake.set()
        recording = self._recording
        if recording is not None and recording.is_alive():
            try:
                self._connected().control_meeting("stop")
            except (OmniError, DaemonNotRunning):
                pass
            recording.join(recording_patience)
        self._drop_client()
