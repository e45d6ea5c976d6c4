"""`omni screen ...`: watch the screen, pause it, search and ask the history, look once.

    omni screen watch --interval 2 --monitor 1     # start the daemon's watcher and print what it sees
    omni screen watch --detach                     # start it and return
    omni screen pause | resume | status | stop
    omni screen search "quarterly report"
    omni screen ask "what was I reading at 10:00?"
    omni screen once --json                        # one grab, one answer: the smallest end-to-end check
    omni screen forget --since 09:00 --until 10:00 # delete what was seen in that hour (or IDs, or --all)
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from typing import Callable

from omnid.clients.cli_common import (EXIT_OK, WHEN_HELP, ClientFactory, add_delete_flags, deletion_from_args,
                                      parse_when, positive_float, positive_int, print_deleted, print_json,
                                      print_stream, to_dict)
from omnid.proto import omnid_pb2 as pb

#: Half-width of the window around a time of day named in a question ("at 10:00").
ASK_WINDOW_SECONDS = 30 * 60
_TIME_OF_DAY = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b", re.IGNORECASE)


def window_from_question(question: str, now: dt.datetime | None = None) -> tuple[float, float]:
    """(since, until) around a time of day the question names ("at 10:00", "around 3pm"), else (0, 0)."""
    for m in _TIME_OF_DAY.finditer(question):
        hour, minute, half = int(m.group(1)), m.group(2), (m.group(3) or "").lower()
        if minute is None and not half:
            continue  # a bare number is not a time
        if half == "pm" and hour < 12:
            hour += 12
        elif half == "am" and hour == 12:
            hour = 0
        if hour > 23 or int(minute or 0) > 59:
            continue
        center = parse_when(f"{hour:02d}:{int(minute or 0):02d}", now)
        return center - ASK_WINDOW_SECONDS, center + ASK_WINDOW_SECONDS
    return 0.0, 0.0


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _print_observation(o: pb.ScreenObservation, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(o))
        return
    where = " - ".join(p for p in (o.app, o.window) if p)
    print(f"[{_clock(o.time_unix)}] monitor {o.monitor}{' ' + where if where else ''}: {o.text}", flush=True)


def _print_state(s: pb.ScreenWatchState, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(s))
        return
    mode = "not watching" if not s.watching else "paused" if s.paused else "watching"
    where = "all monitors" if s.monitor == 0 else f"monitor {s.monitor}"
    print(f"{mode}" + (f" {where} every {s.interval_seconds:g} s" if s.watching else ""), flush=True)
    print(f"frames: {s.frames_grabbed} grabbed, {s.frames_unchanged} unchanged, {s.frames_excluded} excluded, "
          f"{s.frames_sent} sent to the model", flush=True)
    print(f"excluded: {'; '.join(s.exclusions)}", flush=True)


def cmd_watch(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        before = client.control_screen_watch("status")
        state = client.start_screen_watch(args.interval, args.monitor, args.prompt, args.exclude, args.threshold)
        if before.watching:
            print(f"omni: replaced the running watcher ({_settings(before)}) with {_settings(state)}",
                  file=sys.stderr)
        _print_state(state, args.json)
        if args.detach:
            return EXIT_OK
        try:
            for event in client.watch_screen():
                if event.WhichOneof("event") == "observation":
                    _print_observation(event.observation, args.json)
                elif not event.state.watching:
                    _print_state(event.state, args.json)
                    return EXIT_OK
        except KeyboardInterrupt:
            _print_state(client.stop_screen_watch(), args.json)
    return EXIT_OK


def _settings(s) -> str:
    where = "all monitors" if s.monitor == 0 else f"monitor {s.monitor}"
    return f"{where} every {s.interval_seconds:g} s"


def cmd_forget(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    selection = deletion_from_args(args)
    with client_factory() as client:
        reply = client.delete_screen_history(**selection)
    print_deleted(reply, "screen observation", args.json)
    return EXIT_OK


def _control(action: str) -> Callable[[argparse.Namespace, ClientFactory], int]:
    def run(args: argparse.Namespace, client_factory: ClientFactory) -> int:
        with client_factory() as client:
            state = client.stop_screen_watch() if action == "stop" else client.control_screen_watch(action)
        _print_state(state, args.json)
        return EXIT_OK
    return run


def cmd_search(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    since = parse_when(args.since) if args.since else 0.0
    until = parse_when(args.until) if args.until else 0.0
    with client_factory() as client:
        found = client.search_screen(args.text, args.limit, since, until)
    for o in found:
        _print_observation(o, args.json)
    if not found and not args.json:
        print("no matching observations", file=sys.stderr)
    return EXIT_OK


def cmd_ask(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    since = parse_when(args.since) if args.since else 0.0
    until = parse_when(args.until) if args.until else 0.0
    if not since and not until:
        since, until = window_from_question(args.question)
    with client_factory() as client:
        print_stream(client.ask_screen(args.question, since, until, args.max_tokens), args.json,
                     {"since_unix": since, "until_unix": until})
    return EXIT_OK


def cmd_once(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        print_stream(client.screen_once(args.prompt, args.monitor, args.max_tokens), args.json,
                     {"monitor": args.monitor})
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    """Add `omni screen ...`; handlers are called as handler(args, client_factory) by omni's main."""
    screen = commands.add_parser("screen", help="watch the screen, search and ask what it showed")
    sub = screen.add_subparsers(title="screen commands", dest="screen_command", metavar="SCREEN_COMMAND",
                                required=True)

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        return p

    watch = with_json(sub.add_parser("watch", help="start the daemon's watcher and print what the model sees"))
    watch.add_argument("--interval", type=positive_float, default=1.0,
                       help="seconds between grabs, 0.05 to 3600 (default: 1)")
    watch.add_argument("--monitor", type=int, default=1,
                       help="which monitor: 1, 2, ... as the system numbers them, 0 = all together (default: 1)")
    watch.add_argument("--prompt", default="", help="the instruction for changed frames (default: what changed)")
    watch.add_argument("--exclude", action="append", default=[],
                       help="also exclude windows whose class or title contains this (repeatable)")
    watch.add_argument("--threshold", type=float, default=0.0,
                       help="fraction of the screen that must change (default: 0.002)")
    watch.add_argument("--detach", action="store_true",
                       help="start watching and return (a watcher already running gets the new settings)")
    watch.set_defaults(handler=cmd_watch)

    for action, text in (("pause", "stop grabbing until resume"), ("resume", "grab again"),
                         ("status", "the watcher's state and counters"), ("stop", "stop watching")):
        with_json(sub.add_parser(action, help=text)).set_defaults(handler=_control(action))

    search = with_json(sub.add_parser("search", help="full-text search of the screen history"))
    search.add_argument("text", nargs="?", default="", help="words to find (default: list the newest)")
    search.add_argument("--limit", type=positive_int, default=20, help="at most this many results (default: 20)")
    search.add_argument("--since", default="", help=f"only what was seen from this time on: {WHEN_HELP}")
    search.add_argument("--until", default="", help="only what was seen before this time")
    search.set_defaults(handler=cmd_search)

    ask = with_json(sub.add_parser("ask", help="ask the model about the screen history"))
    ask.add_argument("question", help="the question, answered from what the watcher saw")
    ask.add_argument("--since", default="", help="from this time on (default: 30 min around a time the "
                                                 "question names, else the whole history)")
    ask.add_argument("--until", default="", help="until this time")
    ask.add_argument("--max-tokens", type=positive_int, default=0, help="at most this many tokens (default: 512)")
    ask.set_defaults(handler=cmd_ask)

    once = with_json(sub.add_parser("once", help="grab the screen now and ask the model about it"))
    once.add_argument("--monitor", type=int, default=1, help="which monitor, 0 = all together (default: 1)")
    once.add_argument("--prompt", default="", help="the instruction (default: describe what is on the screen)")
    once.add_argument("--max-tokens", type=positive_int, default=0, help="at most this many tokens (default: 512)")
    once.set_defaults(handler=cmd_once)

    forget = sub.add_parser("forget", help="delete screen history: observations by id, a time range, or all")
    add_delete_flags(forget, "screen observation", "seen")
    forget.set_defaults(handler=cmd_forget)
