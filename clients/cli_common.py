"""What every `omni` command shares: exit codes, argument types, JSON output, progress, sampling flags,
printing a generating stream and its usage.

Its own module so that clients/cli.py and the area modules (cli_documents, cli_meetings, cli_screen) all
import it at the top, without importing each other.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from omnid.clients.client import OmniClient
from omnid.proto import omnid_pb2 as pb

ClientFactory = Callable[[], OmniClient]

# The exit codes of every `omni` command (the README's table).
EXIT_OK = 0
EXIT_DAEMON_ERROR = 1    # the daemon refused or failed the request (its gRPC status is printed)
EXIT_USAGE = 2           # bad arguments, or a local file that cannot be read
EXIT_NO_DAEMON = 3       # no daemon answers at the socket / TCP address
EXIT_INTERRUPTED = 130   # Ctrl-C
EXIT_PIPE_CLOSED = 141   # stdout was closed early (`omni ... | head`): nothing is printed about it


class UsageError(ValueError):
    """A problem with what the user typed, found before asking the daemon: exit code 2."""


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, named as in proto/omnid.proto (snake_case), zero values included.

    Every `--json` output uses this one convention.
    """
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_json(value: Any) -> None:
    print(json.dumps(value), flush=True)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def read_prompt(value: str, stdin: TextIO | None = None) -> str:
    """A prompt argument: `-` reads stdin, `@FILE` reads a text file, anything else is the text itself
    (`@@text` for text that starts with `@`)."""
    if value == "-":
        return (stdin or sys.stdin).read()
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@") and len(value) > 1:
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the prompt file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"the prompt file {path} is not UTF-8 text") from None
    return value


def parse_when(value: str, now: dt.datetime | None = None) -> float:
    """'HH:MM' (today, or yesterday if that is still to come), 'YYYY-MM-DD HH:MM', or unix seconds."""
    now = now or dt.datetime.now()
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(value, fmt).timestamp()
        except ValueError:
            pass
    try:
        t = dt.datetime.strptime(value, "%H:%M").time()
    except ValueError:
        raise ValueError(f"cannot read the time {value!r}: use HH:MM, 'YYYY-MM-DD HH:MM' or unix seconds") from None
    when = dt.datetime.combine(now.date(), t)
    if when > now:
        when -= dt.timedelta(days=1)
    return when.timestamp()


WHEN_HELP = "HH:MM (the last one), 'YYYY-MM-DD HH:MM' or unix seconds"


def add_delete_flags(parser: argparse.ArgumentParser, what: str, when: str) -> None:
    """`rm ID...`, or `--since/--until`, or `--all`: the selection of a Delete* call."""
    parser.add_argument("ids", nargs="*", metavar="ID", help=f"{what} ids, or unique prefixes of them")
    parser.add_argument("--since", default="", help=f"delete those {when} from this time on: {WHEN_HELP}")
    parser.add_argument("--until", default="", help=f"delete those {when} before this time")
    parser.add_argument("--all", action="store_true", help=f"delete every {what}")
    parser.add_argument("--json", action="store_true", help="print what was deleted as JSON")


def deletion_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the client's delete_* calls; exactly one kind of selection, or UsageError."""
    since = parse_when(args.since) if args.since else 0.0
    until = parse_when(args.until) if args.until else 0.0
    if sum((bool(args.ids), bool(since or until), args.all)) != 1:
        raise UsageError("say what to delete: ids, or --since/--until, or --all (one of them)")
    return {"ids": args.ids, "since": since, "until": until, "everything": args.all}


def print_deleted(reply: pb.DeleteReply, what: str, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(reply))
        return
    cached = f", {reply.cache_entries_removed} prompt-cache entries" if reply.cache_entries_removed else ""
    files = f", {reply.bytes_removed / 2**20:.1f} MiB of files" if reply.bytes_removed else ""
    print(f"deleted {reply.deleted} {what}{'' if reply.deleted == 1 else 's'}{cached}{files}")
    for deleted_id in reply.deleted_ids:
        print(f"  {deleted_id}")


PROMPT_HELP = "the text; `-` reads it from stdin, `@FILE` from a text file"


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=positive_int, default=0,
                        help="at most this many tokens (default: the daemon's, 512; 128 and stopping at a blank "
                             "line for a base model)")
    parser.add_argument("--temperature", type=float, default=0.0, help="randomness; 0 = greedy (default: 0)")
    parser.add_argument("--top-p", type=float, default=0.0,
                        help="sample from the smallest set of tokens whose probabilities add up to this "
                             "(0-1; default: 0 = off)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample from this many most likely tokens (default: 0 = off)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed for sampling; equal seeds give equal answers (default: 0 = a fixed seed)")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> pb.Sampling:
    return pb.Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                       stop=args.stop)


def print_stream(events: Iterable, as_json: bool, extra: dict | None = None) -> pb.Final:
    """Print deltas as they come (or one JSON object at the end), a long prefill's progress on stderr before
    them; returns the final message."""
    final = pb.Final()
    progress = Progress("tokens", enabled=not as_json)
    try:
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "progress":
                show_progress(progress, event.progress)
            elif kind == "delta" and not as_json:
                progress.close()
                print(event.delta, end="", flush=True)
            elif kind == "done":
                final = event.done
    finally:
        progress.close()
    if as_json:
        print_json({**to_dict(final), **(extra or {})})
    else:
        print()
    return final


def print_usage(usage: pb.Usage) -> None:
    """One line of what an answer cost, on stderr (the -v flag)."""
    cached = f"{usage.cached_tokens} cached in {usage.cache_restore_ms:.1f} ms" if usage.cached_tokens else "0 cached"
    print(f"[{usage.prompt_tokens} prompt tokens, {cached}, {usage.generated_tokens} generated, "
          f"first token {usage.time_to_first_token_ms:.0f} ms, {usage.decode_tokens_per_second:.1f} tok/s]",
          file=sys.stderr)


def seconds_text(seconds: float) -> str:
    """12 -> '12 s', 400 -> '6.7 min', 9000 -> '2.5 h'."""
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress_note(p: pb.Progress) -> str:
    """The rate and time left of a Progress message, e.g. '2048 cached, 41 tokens/s, about 6.2 min left'."""
    notes = [f"{p.cached} cached"] if p.cached else []
    if p.per_second:
        notes.append(f"{p.per_second:.0f} {p.unit}/s")
    if p.eta_seconds:
        notes.append(f"{'about ' if p.eta_seconds >= 1 else ''}{seconds_text(p.eta_seconds)} left")
    return ", ".join(notes)


def show_progress(progress: "Progress", p: pb.Progress) -> None:
    """A Progress message (a long prefill's tokens, or the wait for the decoder) on a progress display."""
    if p.stage == "waiting":
        ahead = f"{p.done} job{'' if p.done == 1 else 's'} ahead (`omni status` shows them)"
        progress.update("waiting for the decoder", round(p.elapsed_seconds), 0, ahead, unit="s")
        return
    progress.update(p.stage, p.done, p.total, progress_note(p))


class Progress:
    """Progress of a long call on stderr: a tqdm bar on a terminal; plain lines otherwise (a log file or a pipe
    gets one line when the stage changes and one per tenth of the way, never carriage-return redraws)."""

    def __init__(self, unit: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.unit = unit
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._stage = ""
        self._tenth = -1

    def update(self, stage: str, done: float, total: float, note: str = "", unit: str = "") -> None:
        """Show `done` of `total` (0: unknown) at `stage`, in this display's unit unless `unit` says otherwise."""
        if not self.enabled:
            return
        if self.tty:
            self._update_bar(stage, done, total, note, unit or self.unit)
            return
        tenth = int(10 * done / total) if total else 0
        if stage != self._stage or tenth > self._tenth:
            self._stage, self._tenth = stage, tenth
            of = f"/{total:g}" if total else ""
            print(f"{stage}: {done:g}{of} {unit or self.unit}{', ' + note if note else ''}", file=self.stream,
                  flush=True)

    def _update_bar(self, stage: str, done: float, total: float, note: str, unit: str) -> None:
        from tqdm import tqdm

        if self._bar is None or stage != self._stage:
            self.close()
            self._stage = stage
            try:  # the terminal's size; one that reports none (a fresh pseudo-terminal) counts as 80x24,
                size = os.get_terminal_size(self.stream.fileno())  # else tqdm hides the bar in "row 0 of 0"
                columns, rows = size.columns or 80, size.lines or 24
            except (OSError, ValueError):
                columns, rows = 80, 24
            self._bar = tqdm(total=total or None, desc=stage, unit=unit, file=self.stream, leave=True,
                             ncols=columns, nrows=rows)
        self._bar.n = done
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
