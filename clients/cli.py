"""`omni`: the command-line client of a running omnid.

    omni ask "What is in this picture?" --image photo.png
    omni ask "What is said here?" --audio memo.wav --json
    omni ask "Name and age of the person?" --image photo.png --schema person.json
    omni chat -v
    git diff | omni ask - --system "Review this change"
    omni status
    omni web

Area commands (documents, meetings, screen) are added by `register(commands)` functions in
clients/cli_<area>.py; every handler is called as `handler(args, client_factory)` and returns the exit code.
Errors print one line and exit with the codes of the README's table (cli_common.EXIT_*).
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

import grpc

from omnid.clients import cli_chat, cli_documents, cli_meetings, cli_screen, cli_web
from omnid.clients.cli_common import (EXIT_DAEMON_ERROR, EXIT_INTERRUPTED, EXIT_NO_DAEMON, EXIT_OK,
                                      EXIT_PIPE_CLOSED, EXIT_USAGE, PROMPT_HELP, ClientFactory,
                                      add_sampling_flags, print_json, print_stream, print_usage, progress_note,
                                      read_prompt, sampling_from_args, to_dict)
from omnid.clients.client import DaemonNotRunning, OmniClient, OmniError, connect, parts_for
from omnid.proto import omnid_pb2 as pb
from omnid.clients.menubar_actions import add_menubar_flags


def version() -> str:
    try:
        return metadata.version("omnid")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--socket", default=None,
                       help="the daemon's Unix socket (default: OMNID_SOCKET or the runtime dir)")
    group.add_argument("--tcp", default=None, metavar="HOST:PORT", help="a loopback HOST:PORT instead of the socket")
    group.add_argument("--token-file", default=None,
                       help="the token for --tcp (default: OMNID_TOKEN, else ~/.config/omnid/token)")


def cmd_ask(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    if args.schema:
        return cli_chat.ask_with_schema(args, client_factory)
    question = read_prompt(args.question)
    parts = parts_for(question, args.image, args.audio)
    with client_factory() as client:
        events = client.generate(*parts, system=read_prompt(args.system), max_tokens=args.max_tokens,
                                 sampling=sampling_from_args(args))
        final = print_stream(events, args.json)
    if args.verbose and not args.json:
        print_usage(final.usage)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        status = client.status()
    if args.json:
        print_json(to_dict(status))
        return EXIT_OK
    c = status.cache
    print(f"model      {status.model_name} ({status.backend}) {status.model_path}")
    if status.mmproj_path:
        print(f"mmproj     {status.mmproj_path}")
    print(f"can        {', '.join(status.capabilities)}; "
          f"context {status.context_length} tokens ({_context_why(status)})")
    print(f"endpoint   {status.endpoint}")
    if status.http_url:
        print(f"web page   {status.http_url} (`omni web` opens it, logged in)")
    idle = f"; unloads after {status.idle_unload_seconds:g} s idle" if status.idle_unload_seconds else ""
    loaded = "loaded" if status.model_loaded else "not loaded (the next request loads it)"
    print(f"state      model {loaded}{idle}")
    print(f"memory     {status.memory_rss_bytes / 2**20:.0f} MiB resident; up {status.uptime_seconds:.0f} s")
    print(f"queue      {status.queue_depth}/{status.queue_capacity} waiting ({status.queue_interactive} interactive, "
          f"{status.queue_background} background){'; busy' if status.busy else ''}")
    if status.sequences_total > 1:
        batch = (f"; {status.batch_sequences:.1f} sequences, {status.batch_tokens:.0f} tokens a step "
                 f"({status.decode_steps} steps)" if status.decode_steps else "")
        print(f"sequences  {status.sequences_in_use}/{status.sequences_total} in use{batch}")
    running = list(status.active) or ([status.running] if status.HasField("running") else [])
    parallel = status.sequences_total > 1
    print(f"running    {_job_line(running[0], parallel) if running else 'nothing'}")
    for job in running[1:]:
        print(f"running    {_job_line(job, parallel)}")
    for job in status.waiting:
        print(f"waiting    {_job_line(job)}")
    if status.prefill_tokens_per_second:
        print(f"prefill    {status.prefill_tokens_per_second:.0f} tokens/s (measured on this machine's prompts)")
    print(f"cache      {c.hits} hits, {c.misses} misses, {c.tokens_reused} tokens reused, {c.entries} entries, "
          f"{c.ram_bytes / 2**20:.1f}/{c.ram_budget_bytes / 2**20:.0f} MiB RAM, "
          f"{c.disk_bytes / 2**20:.1f} MiB disk, {c.evictions} evictions, {c.pinned} pinned")
    resume = (f"checkpoints every {c.checkpoint_interval} tokens ({c.checkpoint_bytes / 2**20:.1f} MiB)"
              if c.checkpoint_interval else "cut back to the shared tokens")
    print(f"hits by    live {c.live_hits}, snapshot {c.snapshot_hits}, checkpoint {c.checkpoint_hits}; {resume}; "
          f"state {c.state_base_bytes / 1024:.0f} KiB + {c.state_bytes_per_token:.0f} B/token")
    if status.note:
        print(f"note       {status.note}")
    return EXIT_OK


def _context_why(status: pb.StatusReply) -> str:
    """Where the context length came from, in words."""
    trained = f"the model was trained on {status.trained_context_length}" if status.trained_context_length else ""
    memory = f"memory holds {status.memory_context_length}" if status.memory_context_length else ""
    if status.context_source == "model":
        return "the model's trained context" + (f"; {memory}" if memory else "")
    if status.context_source == "memory":
        return "as much as memory holds" + (f"; {trained}" if trained else "")
    return "; ".join(p for p in ("--ctx", trained, memory) if p)


def _job_line(job: pb.JobState, parallel: bool = False) -> str:
    """'ask-document for 12.0 s (waited 0.1 s): prefilling 2048/31000 tokens, 41 tokens/s, about 12 min left'."""
    kind = " (background)" if job.priority == "background" else ""
    if not job.running_seconds:
        return f"{job.name}{kind}, waiting for {job.queued_seconds:.1f} s"
    where = f" on sequence {job.sequence}" if parallel and job.sequence >= 0 else ""
    line = f"{job.name}{kind}{where} for {job.running_seconds:.1f} s (waited {job.queued_seconds:.1f} s)"
    if job.HasField("progress"):
        p = job.progress
        note = progress_note(p)
        line += f": {p.stage} {p.done}/{p.total} {p.unit}{', ' + note if note else ''}"
    return line


def cmd_unload(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        was_loaded = client.unload()
    print("model unloaded; the next request loads it again" if was_loaded else "the model was not loaded")
    return EXIT_OK


def cmd_menubar(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    from omnid.clients import menubar  # pystray, Pillow and Tk only for this command
    return menubar.run(args)


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="omni", description="Ask the local omnid daemon.",
                                     epilog="Exit codes: 0 ok, 1 the daemon refused or failed the request, "
                                            "2 usage error, 3 no daemon running, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"omni {version()}")
    add_connection_flags(parser)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    ask = commands.add_parser("ask", help="ask about text, images and sounds")
    ask.add_argument("question", help=PROMPT_HELP)
    ask.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    ask.add_argument("--audio", action="append", default=[], help="a sound file (repeatable)")
    ask.add_argument("--system", default="", help="a system text (`@FILE` reads it from a file)")
    ask.add_argument("--json", action="store_true", help="print one JSON object with the text and usage")
    ask.add_argument("-v", "--verbose", action="store_true", help="print usage to stderr")
    ask.add_argument("--schema", default="", metavar="FILE.json",
                     help="answer with JSON valid for this JSON Schema (constrained sampling)")
    add_sampling_flags(ask)
    ask.set_defaults(handler=cmd_ask)

    status = commands.add_parser("status", help="the model, queue and cache")
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")
    status.set_defaults(handler=cmd_status)

    unload = commands.add_parser("unload", help="free the model's memory now (the next request loads it again)")
    unload.set_defaults(handler=cmd_unload)
    cli_chat.register(commands)
    menubar = commands.add_parser("menubar", help="the tray icon and its menu (also `omnid-menubar`)")
    add_menubar_flags(menubar)
    menubar.set_defaults(handler=cmd_menubar)
    cli_documents.register(commands)
    cli_meetings.register(commands)
    cli_screen.register(commands)
    cli_web.register(commands)
    return parser, commands


def run(argv: list[str] | None = None) -> int:
    """Parse and run one command; every failure is one line on stderr and an exit code."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)

    def client_factory() -> OmniClient:
        return connect(args.socket, args.tcp, args.token_file)

    try:
        return args.handler(args, client_factory)
    except DaemonNotRunning as exc:
        print(f"omni: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except (OmniError, grpc.RpcError) as exc:
        print(f"omni: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_DAEMON_ERROR
    except BrokenPipeError:
        raise
    except OSError as exc:  # a local file: name it, without Python's "[Errno 2]"
        where = f" {exc.filename}" if exc.filename else ""
        print(f"omni: cannot read{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"omni: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    try:
        code = run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`omni status | head -1`): stop quietly, like other Unix tools. Point stdout
        # at /dev/null so the interpreter's final flush has nowhere to fail either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
