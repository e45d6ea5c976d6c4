"""`omni screen` argument handling: times named in questions and flags."""
from __future__ import annotations

import datetime as dt

import pytest

from omnid.clients.cli import build_parser
from omnid.clients.cli_screen import ASK_WINDOW_SECONDS, parse_when, window_from_question
from omnid.proto import omnid_pb2 as pb

NOW = dt.datetime(2026, 5, 4, 15, 30)


class _RecordingScreenClient:
    """Stands in for OmniClient in a command's dispatch only: records which screen call the command made."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __enter__(self) -> "_RecordingScreenClient":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def stop_screen_watch(self) -> pb.ScreenWatchState:
        self.calls.append("stop")
        return pb.ScreenWatchState()

    def control_screen_watch(self, action: str) -> pb.ScreenWatchState:
        self.calls.append(action)
        return pb.ScreenWatchState(watching=True, paused=action == "pause")


def test_a_time_of_day_in_the_question_becomes_a_window():
    since, until = window_from_question("what was I reading at 10:00?", NOW)
    center = dt.datetime(2026, 5, 4, 10, 0).timestamp()
    assert (since, until) == (center - ASK_WINDOW_SECONDS, center + ASK_WINDOW_SECONDS)
    since, _ = window_from_question("around 3pm what was open", NOW)
    assert since == dt.datetime(2026, 5, 4, 15, 0).timestamp() - ASK_WINDOW_SECONDS
    # A time still to come today means yesterday.
    since, _ = window_from_question("at 22:15 yesterday", NOW)
    assert since == dt.datetime(2026, 5, 3, 22, 15).timestamp() - ASK_WINDOW_SECONDS
    assert window_from_question("what did I read in chapter 3?", NOW) == (0.0, 0.0)


def test_parse_when_forms():
    assert parse_when("1700000000") == 1700000000.0
    assert parse_when("2026-05-04 09:05") == dt.datetime(2026, 5, 4, 9, 5).timestamp()
    assert parse_when("09:05", NOW) == dt.datetime(2026, 5, 4, 9, 5).timestamp()
    with pytest.raises(ValueError, match="HH:MM"):
        parse_when("teatime")


def test_screen_commands_parse():
    parser, _ = build_parser()
    args = parser.parse_args(["screen", "watch", "--interval", "2", "--monitor", "0", "--exclude", "slack"])
    assert (args.interval, args.monitor, args.exclude, args.detach) == (2.0, 0, ["slack"], False)
    for action in ("pause", "resume", "status", "stop"):
        args = parser.parse_args(["screen", action])
        client = _RecordingScreenClient()
        assert args.handler(args, lambda: client) == 0
        assert client.calls == [action]  # each command asks the daemon for its own action
    assert parser.parse_args(["screen", "once", "--json"]).json
    assert parser.parse_args(["screen", "search", "invoice", "--limit", "5"]).text == "invoice"
