"""`omni`: the command-line client of a running omnid.

    omni ask "What is in this picture?" --image photo.png
    omni ask "What is said here?" --audio memo.wav --json
    omni status

Area commands (documents, meetings, screen) are added by `register(commands)` functions in
clients/cli_<area>.py; every handler is called as `handler(args, client_factory)`. Errors print one line and
exit non-zero: 2 for a gRPC error, 3 without a daemon.
"""
from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from omnid.clients import cli_documents, cli_meetings, cli_screen
from omnid.clients.cli_common import (ClientFactory, add_sampling_flags, print_stream, print_usage,
                                      sampling_from_args)
from omnid.clients.client import DaemonNotRunning, OmniClient, connect, parts_for


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--socket", default=None, help="the daemon's Unix socket (default: OMNID_SOCKET or the runtime dir)")
    group.add_argument("--tcp", default=None, help="a loopback HOST:PORT instead of the socket")
    group.add_argument("--token-file", default=None, help="the token for --tcp (or set OMNID_TOKEN)")


def cmd_ask(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    parts = parts_for(args.question, args.image, args.audio)
    with client_factory() as client:
        events = client.generate(*parts, system=args.system, max_tokens=args.max_tokens,
                                 sampling=sampling_from_args(args))
        final = print_stream(events, args.json)
    if args.verbose and not args.json:
        print_usage(final.usage)
    return 0


def cmd_status(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        status = client.status()
    if args.json:
        print(json.dumps(MessageToDict(status, always_print_fields_with_no_presence=True)))
        return 0
    c = status.cache
    print(f"model      {status.model_name} ({status.backend}) {status.model_path}")
    if status.mmproj_path:
        print(f"mmproj     {status.mmproj_path}")
    print(f"can        {', '.join(status.capabilities)}; context {status.context_length} tokens")
    print(f"endpoint   {status.endpoint}")
    print(f"memory     {status.memory_rss_bytes / 2**20:.0f} MiB resident; up {status.uptime_seconds:.0f} s")
    print(f"queue      {status.queue_depth}/{status.queue_capacity} waiting{'; busy' if status.busy else ''}")
    print(f"cache      {c.hits} hits, {c.misses} misses, {c.tokens_reused} tokens reused, {c.entries} entries, "
          f"{c.ram_bytes / 2**20:.1f}/{c.ram_budget_bytes / 2**20:.0f} MiB RAM, "
          f"{c.disk_bytes / 2**20:.1f} MiB disk, {c.evictions} evictions, {c.pinned} pinned")
    resume = (f"checkpoints every {c.checkpoint_interval} tokens ({c.checkpoint_bytes / 2**20:.1f} MiB)"
              if c.checkpoint_interval else "cut back to the shared tokens")
    print(f"hits by    live {c.live_hits}, snapshot {c.snapshot_hits}, checkpoint {c.checkpoint_hits}; {resume}; "
          f"state {c.state_base_bytes / 1024:.0f} KiB + {c.state_bytes_per_token:.0f} B/token")
    if status.note:
        print(f"note       {status.note}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="omni", description="Ask the local omnid daemon.")
    add_connection_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="ask about text, images and sounds")
    ask.add_argument("question")
    ask.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    ask.add_argument("--audio", action="append", default=[], help="a sound file (repeatable)")
    ask.add_argument("--system", default="", help="a system text")
    ask.add_argument("--json", action="store_true", help="print one JSON object with the text and usage")
    ask.add_argument("-v", "--verbose", action="store_true", help="print usage to stderr")
    add_sampling_flags(ask)
    ask.set_defaults(handler=cmd_ask)

    status = commands.add_parser("status", help="the model, queue and cache")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    cli_documents.register(commands)
    cli_meetings.register(commands)
    cli_screen.register(commands)
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)

    def client_factory() -> OmniClient:
        return connect(args.socket, args.tcp, args.token_file)

    try:
        return args.handler(args, client_factory)
    except DaemonNotRunning as exc:
        print(f"omni: {exc}", file=sys.stderr)
        return 3
    except grpc.RpcError as exc:
        print(f"omni: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except (OSError, ValueError) as exc:
        print(f"omni: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
