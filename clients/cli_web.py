"""`omni web`: open the daemon's web page in the browser, logged in with a one-time link.

The link (CreateLoginLink) works once, within a minute: printing it is safe, and it is what a person without
the menubar uses (or a browser on a machine without a desktop opener: `omni web --print`).
"""
from __future__ import annotations

import argparse
import webbrowser

from omnid.clients.cli_common import EXIT_OK, ClientFactory


def cmd_web(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory() as client:
        url = client.login_link()
    print(url, flush=True)
    if not args.print_only:
        webbrowser.open(url)
    return EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:
    web = commands.add_parser("web", help="open the web page (needs `omnid serve --http 127.0.0.1:PORT`)")
    web.add_argument("--print", dest="print_only", action="store_true",
                     help="only print the one-time login link (it works once, within a minute)")
    web.set_defaults(handler=cmd_web)
