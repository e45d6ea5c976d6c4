"""`omni chat`: a conversation in the terminal (like `ollama run`), and `omni ask --schema`.

    omni chat --system "Be brief." -v
    >>> /image photo.png
    >>> What is this?
    >>> /think off
    >>> And the colors?

Lines starting with / are commands (/help lists them); attachments (/image, /audio, /doc, /screen) join the next
message. The history lives in this process until you quit; the daemon's cache keeps each answered turn, so a
turn costs only its new message. Thinking streams dimmed, apart from the answer; a long history's prefill
(or a wait for the decoder) shows its progress on stderr first, as `omni ask` does.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Callable, TextIO

from omnid.clients.chat import Conversation
from omnid.clients.cli_common import (EXIT_OK, ClientFactory, Progress, add_sampling_flags, print_json, print_usage,
                                      read_prompt, sampling_from_args, show_progress, to_dict)
from omnid.clients.client import OmniError, audio, image, parts_for, text
from omnid.proto import omnid_pb2 as pb

HELP = """commands:
  /image PATH      attach an image to the next message
  /audio PATH      attach a sound file to the next message
  /doc ID [FIRST-LAST]  attach an ingested document (or a page range)
  /screen [MONITOR]     attach a grab of the screen (1 = the first monitor, 0 = all)
  /think on|off    switch the model's thinking for the next turns
  /clear           forget the conversation (the system text stays)
  /bye             quit (also Ctrl-D)"""
DIM, RESET = "\033[2m", "\033[0m"


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="an interactive conversation (streaming; /help inside)")
    chat.add_argument("--system", default="", help="a system text (`@FILE` reads it from a file)")
    chat.add_argument("--think", choices=("on", "off"), default=None,
                      help="the model's thinking (default: the model's own default)")
    chat.add_argument("--thinking-budget", type=int, default=None, metavar="TOKENS",
                      help="close the thinking after this many tokens")
    chat.add_argument("-v", "--verbose", action="store_true", help="print each answer's usage to stderr")
    add_sampling_flags(chat)
    chat.set_defaults(handler=cmd_chat)


def cmd_chat(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        talk = client.conversation(read_prompt(args.system), max_tokens=args.max_tokens,
                                   thinking=None if args.think is None else args.think == "on",
                                   thinking_budget=args.thinking_budget, sampling=sampling_from_args(args))
        Repl(talk, sys.stdin, sys.stdout, args.verbose).run()
    return EXIT_OK


class Repl:
    """Reads lines, runs commands, sends messages and prints the streamed answers."""

    def __init__(self, talk: Conversation, stdin: TextIO, stdout: TextIO, verbose: bool) -> None:
        self.talk, self.stdin, self.out, self.verbose = talk, stdin, stdout, verbose
        self.tty = stdin.isatty() and stdout.isatty()
        self.attached: list[pb.Part] = []
        self.commands: dict[str, Callable[[list[str]], None]] = {
            "/image": self._image, "/audio": self._audio, "/doc": self._doc, "/screen": self._screen,
            "/think": self._think, "/clear": self._clear, "/help": lambda _: self._say(HELP)}

    def run(self) -> None:
        while True:
            line = self._read()
            if line is None or line.strip() in ("/bye", "/quit", "/exit"):
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                self._command(line)
                continue
            self._send(line)

    def _read(self) -> str | None:
        if self.tty:
            try:
                return input(">>> ")
            except EOFError:
                return None
            except KeyboardInterrupt:
                self.out.write("\n")
                return None
        line = self.stdin.readline()
        return line if line else None

    def _command(self, line: str) -> None:
        try:
            name, *rest = shlex.split(line)
        except ValueError as exc:
            self._error(str(exc))
            return
        handler = self.commands.get(name)
        if handler is None:
            self._error(f"unknown command {name} (/help lists them)")
            return
        try:
            handler(rest)
        except (OSError, ValueError) as exc:
            self._error(str(exc))

    def _send(self, line: str) -> None:
        parts, self.attached = [*self.attached, text(line)], []
        thinking = False
        progress = Progress("tokens")  # a long history's prefill, or the wait for the decoder, as `omni ask` shows
        events = self.talk.send(*parts)
        try:
            for event in events:
                kind = event.WhichOneof("event")
                if kind == "progress":
                    show_progress(progress, event.progress)
                    continue
                progress.close()
                if kind == "reasoning_delta":
                    if not thinking:
                        self._write(DIM if self.tty else "[thinking] ")
                        thinking = True
                    self._write(event.reasoning_delta)
                    continue
                if thinking:
                    self._write(RESET + "\n" if self.tty else "\n[/thinking]\n")
                    thinking = False
                if kind == "delta":
                    self._write(event.delta)
                elif kind == "tool_call":
                    self._write(f"\n[tool call {event.tool_call.name} {event.tool_call.arguments}]")
                elif kind == "done":
                    self._write("\n")
                    if self.verbose:
                        print_usage(event.done.usage)
        except OmniError as exc:
            self._write(RESET if thinking and self.tty else "")
            self._error(f"{exc.code().name}: {exc.details()}")
        except KeyboardInterrupt:
            events.close()  # type: ignore[attr-defined]
            self._write((RESET if self.tty else "") + "\n[interrupted]\n")
        finally:
            progress.close()

    def _image(self, rest: list[str]) -> None:
        self.attached.append(image(_path(rest, "/image PATH")))
        self._say(f"[image {rest[0]} attached]")

    def _audio(self, rest: list[str]) -> None:
        self.attached.append(audio(_path(rest, "/audio PATH")))
        self._say(f"[sound {rest[0]} attached]")

    def _doc(self, rest: list[str]) -> None:
        if not rest:
            raise ValueError("usage: /doc ID [FIRST-LAST]")
        first = last = 0
        if len(rest) > 1:
            first_text, _, last_text = rest[1].partition("-")
            first, last = int(first_text), int(last_text or first_text)
        self.attached.append(pb.Part(document=pb.DocumentRef(document_id=rest[0], first_page=first,
                                                             last_page=last)))
        self._say(f"[document {rest[0]} attached]")

    def _screen(self, rest: list[str]) -> None:
        monitor = int(rest[0]) if rest else 1
        self.attached.append(pb.Part(screen=pb.ScreenRef(monitor=monitor)))
        self._say(f"[a grab of monitor {monitor} will be attached]")

    def _think(self, rest: list[str]) -> None:
        if rest not in (["on"], ["off"]):
            raise ValueError("usage: /think on|off")
        self.talk.thinking = rest[0] == "on"
        self._say(f"[thinking {rest[0]}]")

    def _clear(self, rest: list[str]) -> None:
        self.talk.clear()
        self.attached = []
        self._say("[conversation cleared]")

    def _say(self, message: str) -> None:
        self._write(message + "\n")

    def _error(self, message: str) -> None:
        print(f"omni: {message}", file=sys.stderr, flush=True)

    def _write(self, piece: str) -> None:
        self.out.write(piece)
        self.out.flush()


def _path(rest: list[str], usage: str) -> Path:
    if len(rest) != 1:
        raise ValueError(f"usage: {usage}")
    return Path(rest[0]).expanduser()


def ask_with_schema(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    """`omni ask --schema FILE.json`: the answer constrained to the schema, printed as its JSON."""
    try:
        schema = json.loads(Path(args.schema).expanduser().read_text())
    except RecursionError:  # json's parser recurses once per level: a hostile file must not end in a traceback
        raise ValueError(f"{args.schema} is nested too deeply to be a JSON Schema") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.schema} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"{args.schema} does not hold a JSON object (a JSON Schema)")
    parts = parts_for(read_prompt(args.question), args.image, args.audio)
    with client_factory() as client:
        talk = client.conversation(read_prompt(args.system), max_tokens=args.max_tokens, thinking=False,
                                   sampling=sampling_from_args(args))
        progress = Progress("tokens", enabled=not args.json)  # a long prefill on stderr, as `omni ask` shows it

        def on_event(event: pb.ChatEvent) -> None:
            if event.WhichOneof("event") == "progress":
                show_progress(progress, event.progress)
        try:
            final = talk.ask(*parts, schema=schema, on_event=on_event)  # the JSON is printed whole, once valid
        finally:
            progress.close()
    if args.json:
        print_json(to_dict(final))
    else:
        print(final.text)
    if args.verbose and not args.json:
        print_usage(final.usage)
    return EXIT_OK

