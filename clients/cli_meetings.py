"""`omni transcribe` and `omni meeting ...`: transcripts of files and of live meetings, stored and searchable.

    omni transcribe standup.wav --summary           # timestamped segments as they are produced
    omni transcribe call.mp3 --format srt > call.srt   # subtitles (also vtt, txt, json)
    omni transcribe memo.wav --no-store             # keep nothing on the daemon's side
    omni meeting devices                            # input devices on the daemon's machine
    omni meeting start --title "Weekly" --summary   # record and transcribe live; Ctrl-C stops (and finishes)
    omni meeting pause | resume | stop              # from another terminal
    omni meeting list | show ID | search WORDS      # ID: any unique prefix of it
    omni meeting rm ID                              # delete the transcript and the audio the daemon kept
"""
from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import Iterable

import grpc

from omnid.common import transcript_formats
from omnid.clients.cli_common import (EXIT_OK, ClientFactory, add_delete_flags, deletion_from_args, positive_float,
                                      positive_int, print_deleted, print_json, to_dict)
from omnid.clients.client import OmniError
from omnid.proto import omnid_pb2 as pb


def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:04.1f}" if hours else f"{minutes:02d}:{s:04.1f}"


def _line(segment: pb.TranscriptSegment) -> str:
    return f"[{_clock(segment.start_seconds)} -> {_clock(segment.end_seconds)}] {segment.text}"


class _Writer:
    """Segments on stdout as they come, in the chosen format (None: the timestamped lines people read)."""

    def __init__(self, fmt: str | None) -> None:
        self.fmt = fmt
        self.count = 0
        if fmt in ("srt", "vtt", "txt"):
            sys.stdout.write(transcript_formats.header(fmt))

    def segment(self, segment: pb.TranscriptSegment) -> None:
        if self.fmt is None:
            print(_line(segment), flush=True)
        elif self.fmt != "json" and transcript_formats.has_words(segment):
            self.count += 1
            sys.stdout.write(transcript_formats.cue(self.fmt, self.count, segment))
            sys.stdout.flush()

    def final(self, final: pb.TranscriptFinal) -> None:
        if self.fmt == "json":
            print_json(to_dict(final))
        elif final.summary and self.fmt in (None, "txt"):
            print("\nSummary:\n" + final.summary)
        elif final.summary:  # a subtitle file has no place for it
            print("Summary:\n" + final.summary, file=sys.stderr)


def _report(final: pb.TranscriptFinal) -> None:
    """What it cost and where it is kept, on stderr."""
    u = final.usage
    print(f"[{final.duration_seconds:.1f} s of audio, {len(final.segments)} segments, {u.prompt_tokens} prompt "
          f"tokens, {u.generated_tokens} generated, {u.total_ms / 1000:.1f} s]", file=sys.stderr)
    if not final.meeting_id:
        print("[nothing was stored]", file=sys.stderr)
        return
    short = final.meeting_id[:8]
    kept = f", audio at {final.audio_path}" if final.audio_path else ""
    print(f"[stored as meeting {final.meeting_id}{kept}; `omni meeting show {short}` shows it, "
          f"`omni meeting rm {short}` deletes it]", file=sys.stderr)


def _stream(events: Iterable[pb.TranscriptEvent], writer: _Writer) -> pb.TranscriptFinal:
    final = pb.TranscriptFinal()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "segment":
            writer.segment(event.segment)
        elif kind == "done":
            final = event.done
    return final


_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _naming_the_file(exc: OmniError, path: str) -> OmniError:
    """A refused upload, said in terms of the user's file (the daemon only saw bytes; an older one names its
    in-memory buffer, "<_io.BytesIO object at 0x...>")."""
    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return exc
    details = _BUFFER_REPR.sub(path, exc.details())
    return OmniError(exc.code(), details if path in details else f"{path}: {details}")


def _format(args: argparse.Namespace) -> str | None:
    return "json" if args.json else args.format


def cmd_transcribe(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    writer = _Writer(_format(args))
    with client_factory() as client:
        events = client.transcribe(args.file, summary=args.summary, language=args.language, title=args.title,
                                   by_path=args.by_path, no_store=args.no_store)
        try:
            final = _stream(events, writer)
        except OmniError as exc:
            raise _naming_the_file(exc, args.file) from None
    writer.final(final)
    _report(final)
    return EXIT_OK


def cmd_start(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    writer = _Writer(_format(args))
    with client_factory() as client:
        events = client.record_meeting(device=args.device, title=args.title, summary=args.summary,
                                       max_seconds=args.max_seconds)
        print("recording; Ctrl-C or `omni meeting stop` ends it", file=sys.stderr)
        try:
            final = _stream(events, writer)
        except KeyboardInterrupt:
            # Stop the recording but keep the stream: the rest is transcribed and the final message comes.
            client.control_meeting("stop")
            final = _stream(events, writer)
    writer.final(final)
    _report(final)
    return EXIT_OK


def cmd_control(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        state = client.control_meeting(args.action, args.meeting_id)
    if args.json:
        print_json(to_dict(state))
    elif state.state == "none":
        print("no meeting is being recorded")
    else:
        print(f"meeting {state.meeting_id}: {state.state}, {state.recorded_seconds:.1f} s recorded, "
              f"audio at {state.audio_path}")
    return EXIT_OK


def cmd_devices(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        devices = client.audio_devices()
    if args.json:
        print_json([to_dict(d) for d in devices])
        return EXIT_OK
    if not devices:
        print("no input devices")
    for d in devices:
        print(f"{d.index:3d}{' *' if d.is_default else '  '} {d.name} ({d.max_input_channels} ch, "
              f"{d.default_sample_rate:.0f} Hz)")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        meetings = client.meetings(getattr(args, "query", ""), args.limit)
    if args.json:
        print_json([to_dict(m) for m in meetings])
        return EXIT_OK
    for m in meetings:
        when = datetime.datetime.fromtimestamp(m.created_unix).strftime("%Y-%m-%d %H:%M")
        print(f"{m.meeting_id}  {when}  {_clock(m.duration_seconds):>9}  {m.title}")
        if m.snippet:
            print(f"    {m.snippet}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        final = client.meeting(args.meeting_id)
    writer = _Writer(_format(args))
    for segment in final.segments:
        writer.segment(segment)
    writer.final(final)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    selection = deletion_from_args(args)
    with client_factory() as client:
        reply = client.delete_meetings(**selection)
    print_deleted(reply, "meeting", args.json)
    return EXIT_OK


def _add_format_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=transcript_formats.FORMATS, default=None,
                        help="txt (plain text), srt or vtt (subtitles), json (everything, at the end); "
                             "default: timestamped lines")
    parser.add_argument("--json", action="store_true", help="the same as --format json")


def register(subparsers: argparse._SubParsersAction) -> None:
    transcribe = subparsers.add_parser("transcribe", help="transcribe an audio file (WAV, FLAC, OGG, MP3)",
                                       description="Transcribe an audio file. The daemon stores the transcript "
                                                   "and a copy of the audio as a meeting (it says where); "
                                                   "--no-store keeps nothing.")
    transcribe.add_argument("file", help="the audio file")
    transcribe.add_argument("--summary", action="store_true", help="also summarise with action items")
    transcribe.add_argument("--language", default="", help="a language hint, e.g. en")
    transcribe.add_argument("--title", default="", help="stored with the transcript (default: the file name)")
    transcribe.add_argument("--by-path", action="store_true",
                            help="let the daemon read the file itself (it must be under an --allow-read folder)")
    transcribe.add_argument("--no-store", action="store_true",
                            help="keep nothing on the daemon: no stored transcript, no copy of the audio")
    _add_format_flags(transcribe)
    transcribe.set_defaults(handler=cmd_transcribe)

    meeting = subparsers.add_parser("meeting", help="record, control, find and delete meetings")
    actions = meeting.add_subparsers(title="meeting commands", dest="meeting_command", metavar="MEETING_COMMAND",
                                     required=True)
    devices = actions.add_parser("devices", help="input devices on the daemon's machine")
    devices.add_argument("--json", action="store_true", help="print a JSON list")
    devices.set_defaults(handler=cmd_devices)

    start = actions.add_parser("start", help="record from a microphone and transcribe live")
    start.add_argument("--device", default="", help="an input device index or name (see `devices`)")
    start.add_argument("--title", default="", help="stored with the transcript (default: the date and time)")
    start.add_argument("--summary", action="store_true", help="summarise with action items at the end")
    start.add_argument("--max-seconds", type=positive_float, default=0.0,
                       help="stop by itself after this long (default: until stopped)")
    _add_format_flags(start)
    start.set_defaults(handler=cmd_start)

    for action in ("pause", "resume", "stop", "status"):
        p = actions.add_parser(action, help=f"{action} the meeting being recorded")
        p.add_argument("meeting_id", nargs="?", default="", metavar="ID",
                       help="the meeting (default: the one being recorded)")
        p.add_argument("--json", action="store_true", help="print the state as JSON")
        p.set_defaults(handler=cmd_control, action=action)

    listing = actions.add_parser("list", help="stored meetings, newest first")
    listing.add_argument("--limit", type=positive_int, default=50, help="at most this many (default: 50)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=cmd_list)

    search = actions.add_parser("search", help="full-text search of transcripts, titles and summaries")
    search.add_argument("query", help="words to find (the last one may be the start of a word)")
    search.add_argument("--limit", type=positive_int, default=50, help="at most this many (default: 50)")
    search.add_argument("--json", action="store_true", help="print a JSON list")
    search.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help="a stored transcript")
    show.add_argument("meeting_id", metavar="ID", help="the meeting id (a unique prefix is enough)")
    _add_format_flags(show)
    show.set_defaults(handler=cmd_show)

    remove = actions.add_parser("rm", help="delete stored meetings: transcript, summary and the audio kept for them")
    add_delete_flags(remove, "meeting", "recorded or transcribed")
    remove.set_defaults(handler=cmd_rm)
