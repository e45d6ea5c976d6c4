"""`omni doc ...`: ingest PDFs, ask about them, list them.

    omni doc ingest report.pdf                 # (or `doc add`) progress on stderr, then the document's summary
    omni doc ask report.pdf "What changed in Q3?"   # ingests first when the daemon does not hold it yet
    omni doc ask 3f9a... "Which pages mention risk?" --pages 10-30
    omni doc list
    omni doc rm 3f9a                                # delete it (pages, images, its prompt-cache entries)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Iterator

from omnid.clients.cli_common import (EXIT_OK, PROMPT_HELP, ClientFactory, Progress, add_delete_flags,
                                      add_sampling_flags, deletion_from_args, print_deleted, print_json,
                                      print_stream, print_usage, read_prompt, sampling_from_args, seconds_text,
                                      show_progress,
                                      to_dict)
from omnid.clients.documents import document_id
from omnid.proto import omnid_pb2 as pb


def register(commands: argparse._SubParsersAction) -> None:
    """Add `omni doc` and its subcommands; handlers are called as handler(args, client_factory)."""

    doc = commands.add_parser("doc", help="ingest PDFs and ask about them")
    sub = doc.add_subparsers(title="doc commands", dest="doc_command", metavar="DOC_COMMAND", required=True)

    ingest = sub.add_parser("ingest", aliases=["add"], help="read a PDF into the daemon (and warm the cache with it)")
    ingest.add_argument("file", help="a PDF file")
    _add_source_flags(ingest)
    ingest.add_argument("--json", action="store_true", help="print the document's info as JSON")
    ingest.set_defaults(handler=cmd_ingest)

    ask = sub.add_parser("ask", help="ask a question about a PDF (ingesting it first if needed)")
    ask.add_argument("document", help="a PDF file, or the id `omni doc list` shows (a unique prefix is enough)")
    ask.add_argument("question", help=PROMPT_HELP)
    ask.add_argument("--pages", default="", help="a page range such as 3-7 (default: all that fit)")
    _add_source_flags(ask)
    ask.add_argument("--json", action="store_true", help="print one JSON object with the answer")
    ask.add_argument("-v", "--verbose", action="store_true", help="print usage to stderr")
    add_sampling_flags(ask)
    ask.set_defaults(handler=cmd_ask)

    listing = sub.add_parser("list", help="the documents the daemon holds")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=cmd_list)

    remove = sub.add_parser("rm", help="delete documents: pages, page images and their prompt-cache entries")
    add_delete_flags(remove, "document", "ingested")
    remove.set_defaults(handler=cmd_rm)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password", default="", help="the password of an encrypted PDF")
    parser.add_argument("--name", default="", help="a display name (default: the file name)")
    parser.add_argument("--by-path", action="store_true",
                        help="let the daemon read the file itself (it must be under an --allow-read folder) "
                             "instead of sending its bytes")


def cmd_ingest(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        info = _ingest(client, args.file, args, quiet=args.json)
    if args.json:
        print_json(to_dict(info))
    else:
        print(describe(info))
    return EXIT_OK


def cmd_ask(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    first, last = parse_pages(args.pages)
    question = read_prompt(args.question)
    with client_factory() as client:
        doc_id = args.document
        if Path(args.document).expanduser().is_file():
            doc_id = document_id(args.document)
            if doc_id not in {d.document_id for d in client.list_documents()}:
                _ingest(client, args.document, args, quiet=args.json)
        events = client.ask_document(doc_id, question, first_page=first, last_page=last,
                                     max_tokens=args.max_tokens, sampling=sampling_from_args(args))
        used: dict = {"document_id": doc_id, "pages_used": [], "pages_reason": ""}
        final = print_stream(_noting_pages(events, used, quiet=args.json), args.json, extra=used)
    if args.verbose and not args.json:
        print_usage(final.usage)
    return EXIT_OK


def _noting_pages(events: Iterable, used: dict, *, quiet: bool) -> Iterator:
    """The answer's events without its "pages" event, which is noted in `used` (the JSON output) and told on
    stderr: which pages the question read, and why."""
    for event in events:
        if event.WhichOneof("event") != "pages":
            yield event
            continue
        used["pages_used"], used["pages_reason"] = list(event.pages.pages), event.pages.reason
        if not quiet:
            print(f"[pages used: {_ranges(list(event.pages.pages))}: {event.pages.reason}]", file=sys.stderr)


def cmd_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        docs = client.list_documents()
    if args.json:
        print_json([to_dict(d) for d in docs])
        return EXIT_OK
    if not docs:
        print("no documents; add one with `omni doc ingest FILE.pdf`")
    for info in docs:
        print(describe(info))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    selection = deletion_from_args(args)
    with client_factory() as client:
        reply = client.delete_documents(**selection)
    print_deleted(reply, "document", args.json)
    return EXIT_OK


def _ingest(client, source: str, args: argparse.Namespace, *, quiet: bool) -> pb.DocumentInfo:
    progress = Progress("pages", enabled=not quiet)

    tokens = Progress("tokens", enabled=not quiet)

    def update(p: pb.IngestProgress) -> None:
        if p.HasField("prefill"):  # measuring or warming: the prefill's own tokens
            progress.close()
            show_progress(tokens, p.prefill)
            return
        seconds = f"{p.elapsed_ms / 1000:.1f} s"
        progress.update(p.stage, p.pages_done, p.pages_total, f"{p.tokens} tokens, {seconds}" if p.tokens else seconds)

    try:
        return client.ingest_document(source, password=args.password, name=args.name, send_path=args.by_path,
                                      progress=update)
    finally:
        progress.close()
        tokens.close()


def describe(info: pb.DocumentInfo) -> str:
    """A few lines about a document: id, pages by kind, tokens, whether it fits and is warm."""
    kinds = {k: sum(1 for p in info.pages if p.kind == k) for k in ("text", "image", "unread")}
    fits = "fits the context" if info.fits_context else "larger than the context: questions use the best-matching pages"
    lines = [f"{info.document_id[:16]}  {info.name}",
             f"  {info.page_count} pages ({kinds['text']} text, {kinds['image']} scanned"
             f"{', %d unread' % kinds['unread'] if kinds['unread'] else ''}), {info.total_tokens} tokens, {fits}"
             f"{', warm in the cache' if info.cached else ''}, ingested in {info.ingest_ms / 1000:.1f} s"]
    if not info.fits_context and info.context_length:
        cold = (f"; a question on pages not in the cache takes about {seconds_text(info.cold_question_seconds)} "
                "to read them here" if info.cold_question_seconds else "")
        lines.append(f"  {_thousands(info.total_tokens)} tokens, the context holds {_thousands(info.context_length)}: "
                     f"each question reads about {info.question_pages} page{'' if info.question_pages == 1 else 's'} "
                     f"({_thousands(info.question_tokens)} tokens){cold}")
    if info.unread_pages:
        unread = _ranges(list(info.unread_pages))
        lines.append(f"  not readable by this model (scanned, no vision encoder): pages {unread}")
    return "\n".join(lines)


def _thousands(tokens: int) -> str:
    """40500 -> '40.5k', 32768 -> '32k' (a power-of-two context), 900 -> '900'."""
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}k"
    return f"{tokens / 1000:.1f}k" if tokens >= 1000 else str(tokens)


def parse_pages(spec: str) -> tuple[int, int]:
    """'3-7' -> (3, 7); '5' -> (5, 5); '' -> (0, 0) (all); '10-' -> (10, 0) (to the end)."""
    if not spec:
        return 0, 0
    first, sep, last = spec.partition("-")
    try:
        a = int(first) if first else 1
        b = (int(last) if last else 0) if sep else a
    except ValueError:
        raise ValueError(f"--pages takes a range such as 3-7, not {spec!r}") from None
    return a, b


def _ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10'."""
    out, start = [], None
    for i, n in enumerate(pages):
        if start is None:
            start = n
        if i + 1 == len(pages) or pages[i + 1] != n + 1:
            out.append(f"{start}-{n}" if n != start else str(n))
            start = None
    return ", ".join(out)
