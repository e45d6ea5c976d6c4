"""What the menubar shows for a daemon's state: the view, its menu, its tooltip and its icon's look.

Everything here is plain data and pure functions (plus `read_view`, which asks the daemon through the public
client library), so it is tested without a display; clients/menubar.py only turns a `Menu` into pystray or Tk
widgets and an `IconLook` into a picture.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from omnid.clients.client import OmniClient, OmniError

#: Menu actions (what a click asks the controller to do); an entry's `arg` says which device, meeting, document.
ASK = "ask"
ASK_SCREEN = "ask-screen"
RECORD = "record"
STOP_RECORDING = "stop-recording"
PAUSE_WATCHER = "pause-watcher"
RESUME_WATCHER = "resume-watcher"
START_WATCHER = "start-watcher"
SHOW_MEETING = "show-meeting"
ADD_DOCUMENT = "add-document"
ASK_DOCUMENT = "ask-document"
SEARCH_HISTORY = "search-history"
START_DAEMON = "start-daemon"
QUIT = "quit"

#: How many meetings and documents the submenus list (the newest first).
RECENT = 8


@dataclass(frozen=True)
class Device:
    name: str
    is_default: bool = False


@dataclass(frozen=True)
class Item:
    """A meeting or a document in a submenu: its id and what the menu says."""

    id: str
    label: str


@dataclass(frozen=True)
class DaemonView:
    """One look at the daemon, plus the work this menubar has going (its progress lines)."""

    running: bool = False
    looking: bool = False               # not looked at yet (the menubar just started)
    starting: bool = False              # "Start the daemon" was clicked and it does not answer yet
    error: str = ""                     # why the last look failed (other than "not running")
    model: str = ""
    model_loaded: bool = False
    busy: bool = False
    queue_depth: int = 0
    http_url: str = ""                  # the daemon's loopback web page ("" without an HTTP listener)
    meeting_state: str = "none"         # "recording", "paused" or "none"
    recorded_seconds: float = 0.0
    watcher: str = "off"                # "on", "paused" or "off"
    can_see: bool = False               # the model has a vision encoder (the screen needs it)
    can_hear: bool = False              # ... an audio encoder (meetings need it)
    devices: tuple[Device, ...] = ()
    meetings: tuple[Item, ...] = ()
    documents: tuple[Item, ...] = ()
    progress: tuple[str, ...] = ()      # "Transcribing: 0:45", "report.pdf: 12/40 pages", ...

    @property
    def recording(self) -> bool:
        return self.meeting_state in ("recording", "paused")

    @property
    def lists(self) -> "Lists":
        return Lists(self.devices, self.meetings, self.documents)

    def with_progress(self, lines: tuple[str, ...]) -> "DaemonView":
        return replace(self, progress=lines)


@dataclass(frozen=True)
class Entry:
    """A menu entry: a label, and the action a click runs (none: a line of information, shown greyed)."""

    label: str
    action: str = ""
    arg: str = ""
    enabled: bool = True
    children: tuple["Entry", ...] = ()

    @property
    def is_info(self) -> bool:
        return not self.action and not self.children


Menu = tuple[Entry, ...]


@dataclass(frozen=True)
class IconLook:
    """What the icon's picture tells: each field changes it (clients/menubar_icons.py draws it)."""

    running: bool
    loaded: bool = False
    recording: bool = False       # a red dot
    paused_recording: bool = False
    watching: bool = False        # an eye
    working: bool = False         # an amber ring: a transcription, an ingest, an answer being written


def clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"


def http_url(status: Any) -> str:
    """The daemon's web page, when it reports an HTTP listener (StatusReply.http_url; a daemon without the
    field has none). The seam with the HTTP front end: /work/coord/MENUBAR_HTTP.md."""
    fields = status.DESCRIPTOR.fields_by_name
    return str(getattr(status, "http_url")) if "http_url" in fields else ""


def ask_url(client: OmniClient, view: DaemonView) -> str:
    """What "Ask…" opens: a one-time login link into the web page (CreateLoginLink), so the browser gets the
    page's session cookie without the token in a URL; "" without a web page. A daemon from before that RPC:
    the page itself (it says how to log in)."""
    if not view.http_url:
        return ""
    try:
        return client.login_link()
    except OmniError as exc:
        if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION):
            return view.http_url
        raise


@dataclass(frozen=True)
class Lists:
    """What the submenus list: read less often than the state (the documents' replies carry every page)."""

    devices: tuple[Device, ...] = ()
    meetings: tuple[Item, ...] = ()
    documents: tuple[Item, ...] = ()


def read_lists(client: OmniClient, can_hear: bool) -> Lists:
    """The input devices (ListAudioDevices opens the sound system on the daemon's side), the newest meetings
    and the documents."""
    devices: tuple[Device, ...] = ()
    if can_hear:
        try:
            devices = tuple(Device(d.name, d.is_default) for d in client.audio_devices())
        except OmniError:
            pass  # no sound system on the daemon's machine: "Start recording" still tries the default
    meetings = tuple(Item(m.meeting_id, f"{m.title or 'Meeting'} ({clock(m.duration_seconds)})")
                     for m in client.meetings(limit=RECENT))
    documents = tuple(Item(d.document_id, f"{d.name or d.document_id[:12]} ({d.page_count} pages)")
                      for d in client.list_documents()[:RECENT])
    return Lists(devices, meetings, documents)


def read_view(client: OmniClient, lists: Lists | None = None) -> DaemonView:
    """A look at the daemon through its RPCs: Status and the meeting and screen watcher states (three small
    calls), and the submenus' lists unless `lists` (read before) is given."""
    status = client.status()
    meeting = client.control_meeting("status")
    watch = client.control_screen_watch("status")
    can_hear = "audio" in status.capabilities
    if lists is None:
        lists = read_lists(client, can_hear)
    return DaemonView(
        running=True, model=status.model_name, model_loaded=status.model_loaded, busy=status.busy,
        queue_depth=status.queue_depth, http_url=http_url(status),
        meeting_state=meeting.state if meeting.state in ("recording", "paused") else "none",
        recorded_seconds=meeting.recorded_seconds,
        watcher="off" if not watch.watching else "paused" if watch.paused else "on",
        can_see="image" in status.capabilities, can_hear=can_hear,
        devices=lists.devices, meetings=lists.meetings, documents=lists.documents)


def tooltip(view: DaemonView) -> str:
    """The icon's hover text (on the X tray: its window's name), one line of each thing that is true."""
    if view.looking:
        return "omnid: looking for the daemon…"
    if not view.running:
        lines = ["omnid: starting…" if view.starting else "omnid: not running"]
        if view.error:
            lines.append(view.error)
        return "\n".join(lines)
    lines = [f"omnid: {view.model}" + ("" if view.model_loaded else " (not loaded)")]
    if view.recording:
        lines.append(f"Meeting {view.meeting_state}: {clock(view.recorded_seconds)}")
    lines.append({"on": "Screen watcher on", "paused": "Screen watcher paused", "off": "Screen watcher off"}
                 [view.watcher])
    lines.extend(view.progress)
    return "\n".join(lines)


def icon_look(view: DaemonView) -> IconLook:
    if not view.running:
        return IconLook(running=False, working=view.starting)
    return IconLook(running=True, loaded=view.model_loaded, recording=view.meeting_state == "recording",
                    paused_recording=view.meeting_state == "paused", watching=view.watcher == "on",
                    working=bool(view.progress) or view.busy)


def menu(view: DaemonView) -> Menu:
    """The tray menu for this view: what is going on first (greyed lines), then what can be done."""
    if view.looking:  # not "Start the daemon" yet: one may well be running
        return (Entry("Looking for the daemon…"), Entry("Quit", QUIT))
    if not view.running:
        info = Entry("omnid is starting…" if view.starting else "omnid is not running")
        extra = (Entry(view.error),) if view.error else ()
        return (info, *extra, Entry("Start the daemon", START_DAEMON, enabled=not view.starting), Entry("Quit", QUIT))
    entries: list[Entry] = [Entry(f"Model: {view.model}" + ("" if view.model_loaded else " (not loaded)"))]
    entries += [Entry(line) for line in view.progress]
    entries.append(Entry("Ask…", ASK))
    entries.append(Entry("Ask about my screen", ASK_SCREEN, enabled=view.can_see))
    entries += _meeting_entries(view)
    entries.append(_watcher_entry(view))
    entries.append(Entry("Recent meetings", children=tuple(Entry(m.label, SHOW_MEETING, m.id) for m in view.meetings)
                         or (Entry("No meetings yet"),)))
    entries.append(Entry("Documents", children=(Entry("Add a PDF…", ADD_DOCUMENT),
                                                *(Entry(f"Ask {d.label}…", ASK_DOCUMENT, d.id)
                                                  for d in view.documents))))
    entries.append(Entry("Open history search…", SEARCH_HISTORY))
    entries.append(Entry("Quit", QUIT))
    return tuple(entries)


def _meeting_entries(view: DaemonView) -> list[Entry]:
    if view.recording:
        return [Entry(f"Stop recording ({clock(view.recorded_seconds)})", STOP_RECORDING)]
    start = [Entry("Start recording a meeting", RECORD, enabled=view.can_hear)]
    if view.can_hear and len(view.devices) > 1:
        start.append(Entry("Record from", children=tuple(
            Entry(d.name + (" (default)" if d.is_default else ""), RECORD, d.name) for d in view.devices)))
    return start


def _watcher_entry(view: DaemonView) -> Entry:
    if view.watcher == "on":
        return Entry("Pause the screen watcher", PAUSE_WATCHER)
    if view.watcher == "paused":
        return Entry("Resume the screen watcher", RESUME_WATCHER)
    return Entry("Start the screen watcher", START_WATCHER, enabled=view.can_see)


def find(entries: Menu, action: str, arg: str = "") -> Entry | None:
    """The first entry (at any depth) that runs this action (with this arg, when given)."""
    for entry in entries:
        if entry.action == action and (not arg or entry.arg == arg):
            return entry
        found = find(entry.children, action, arg)
        if found is not None:
            return found
    return None


@dataclass
class Progress:
    """The menubar's own long work, as lines for the menu and tooltip (keyed so each job updates its line)."""

    lines: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, line: str) -> None:
        self.lines[key] = line

    def done(self, key: str) -> None:
        self.lines.pop(key, None)

    def snapshot(self) -> tuple[str, ...]:
        return tuple(self.lines.values())
