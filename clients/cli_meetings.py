"""`omni transcribe` and `omni meeting ...`: transcripts of files and of live meetings, stored and searchable.

    omni transcribe standup.wav --summary           # timestamped segments as they are produced
    omni transcribe call.mp3 --json                 # one JSON object at the end: segments, text, usage
    omni meeting devices                            # input devices on the daemon's machine
    omni meeting start --title "Weekly" --summary   # record and transcribe live; Ctrl-C stops (and finishes)
    omni meeting pause | resume | stop              # from another terminal
    omni meeting list | show ID | search WORDS
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Iterable

from google.protobuf.json_format import MessageToDict

from omnid.clients.cli_common import ClientFactory
from omnid.clients.client import usage_dict
from omnid.proto import omnid_pb2 as pb



def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:04.1f}" if hours else f"{minutes:02d}:{s:04.1f}"


def _line(segment: pb.TranscriptSegment) -> str:
    return f"[{_clock(segment.start_seconds)} -> {_clock(segment.end_seconds)}] {segment.text}"


def _final_dict(final: pb.TranscriptFinal) -> dict:
    return {"meeting_id": final.meeting_id, "audio_path": final.audio_path,
            "duration_seconds": final.duration_seconds, "text": final.text, "summary": final.summary,
            "segments": [{"start": s.start_seconds, "end": s.end_seconds, "text": s.text} for s in final.segments],
            "usage": usage_dict(final.usage)}


def _print_final(final: pb.TranscriptFinal, as_json: bool, verbose: bool = True) -> None:
    if as_json:
        print(json.dumps(_final_dict(final)))
        return
    if final.summary:
        print("\nSummary:\n" + final.summary)
    if verbose:
        u = final.usage
        print(f"[meeting {final.meeting_id}: {final.duration_seconds:.1f} s of audio, {len(final.segments)} segments, "
              f"{u.prompt_tokens} prompt tokens, {u.generated_tokens} generated, {u.total_ms / 1000:.1f} s; "
              f"audio at {final.audio_path}]", file=sys.stderr)


def _stream(events: Iterable[pb.TranscriptEvent], as_json: bool) -> pb.TranscriptFinal:
    final = pb.TranscriptFinal()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "segment" and not as_json:
            print(_line(event.segment), flush=True)
        elif kind == "done":
            final = event.done
    return final


def cmd_transcribe(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        events = client.transcribe(args.file, summary=args.summary, language=args.language, title=args.title,
                                   by_path=args.by_path)
        final = _stream(events, args.json)
    _print_final(final, args.json)
    return 0


def cmd_start(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        events = client.record_meeting(device=args.device, title=args.title, summary=args.summary,
                                       max_seconds=args.max_seconds)
        if not args.json:
            print("recording; Ctrl-C or `omni meeting stop` ends it", file=sys.stderr)
        try:
            final = _stream(events, args.json)
        except KeyboardInterrupt:
            # Stop the recording but keep the stream: the rest is transcribed and the final message comes.
            client.control_meeting("stop")
            final = _stream(events, args.json)
    _print_final(final, args.json)
    return 0


def cmd_control(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        state = client.control_meeting(args.action, args.meeting_id)
    if args.json:
        print(json.dumps(MessageToDict(state, always_print_fields_with_no_presence=True)))
    elif state.state == "none":
        print("no meeting is being recorded")
    else:
        print(f"meeting {state.meeting_id}: {state.state}, {state.recorded_seconds:.1f} s recorded, "
              f"audio at {state.audio_path}")
    return 0


def cmd_devices(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        devices = client.audio_devices()
    if args.json:
        print(json.dumps([MessageToDict(d, always_print_fields_with_no_presence=True) for d in devices]))
    elif not devices:
        print("no input devices")
    for d in [] if args.json else devices:
        print(f"{d.index:3d}{' *' if d.is_default else '  '} {d.name} ({d.max_input_channels} ch, "
              f"{d.default_sample_rate:.0f} Hz)")
    return 0


def cmd_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        meetings = client.meetings(getattr(args, "query", ""), args.limit)
    if args.json:
        print(json.dumps([MessageToDict(m, always_print_fields_with_no_presence=True) for m in meetings]))
        return 0
    for m in meetings:
        when = datetime.datetime.fromtimestamp(m.created_unix).strftime("%Y-%m-%d %H:%M")
        print(f"{m.meeting_id}  {when}  {_clock(m.duration_seconds):>9}  {m.title}")
        if m.snippet:
            print(f"    {m.snippet}")
    return 0


def cmd_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        final = client.meeting(args.meeting_id)
    if not args.json:
        for segment in final.segments:
            print(_line(segment))
    _print_final(final, args.json)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    transcribe = subparsers.add_parser("transcribe", help="transcribe an audio file (WAV, FLAC, OGG, MP3)")
    transcribe.add_argument("file")
    transcribe.add_argument("--summary", action="store_true", help="also summarise with action items")
    transcribe.add_argument("--language", default="", help="a language hint, e.g. en")
    transcribe.add_argument("--title", default="", help="stored with the transcript (default: the file name)")
    transcribe.add_argument("--by-path", action="store_true",
                            help="let the daemon read the file itself (it must be under an --allow-read folder)")
    transcribe.add_argument("--json", action="store_true", help="one JSON object at the end")
    transcribe.set_defaults(handler=cmd_transcribe)

    meeting = subparsers.add_parser("meeting", help="record, control and find meetings")
    actions = meeting.add_subparsers(dest="meeting_command", required=True)
    devices = actions.add_parser("devices", help="input devices on the daemon's machine")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(handler=cmd_devices)

    start = actions.add_parser("start", help="record from a microphone and transcribe live")
    start.add_argument("--device", default="", help="an input device index or name (see `devices`)")
    start.add_argument("--title", default="")
    start.add_argument("--summary", action="store_true", help="summarise with action items at the end")
    start.add_argument("--max-seconds", type=float, default=0.0, help="stop by itself after this long")
    start.add_argument("--json", action="store_true", help="one JSON object at the end")
    start.set_defaults(handler=cmd_start)

    for action in ("pause", "resume", "stop", "status"):
        p = actions.add_parser(action, help=f"{action} the meeting being recorded")
        p.add_argument("meeting_id", nargs="?", default="")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=cmd_control, action=action)

    listing = actions.add_parser("list", help="stored meetings, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    search = actions.add_parser("search", help="full-text search of transcripts, titles and summaries")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help="a stored transcript")
    show.add_argument("meeting_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)
