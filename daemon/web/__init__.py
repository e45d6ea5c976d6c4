"""The local web page: its routes, mounted into HttpApi's Starlette app, behind the same _Guard as /v1.

    GET /                 the shell (static/index.html): nav between the views, each a module in static/views/
    GET /static/...       the page's CSS and JavaScript modules (shipped in the package: nothing from a CDN)
    GET /login?once=CODE  a one-time code (CreateLoginLink) traded for the session cookie (auth.py)
    GET /api/status       the Status RPC as JSON (api_status.py)

Everything is plain HTML, CSS and JavaScript modules served as they are: no build step.
"""
from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from omnid.daemon.web import api_status
from omnid.daemon.web.api_status import StatusSource
from omnid.daemon.web.auth import Logins, session_cookie

STATIC = Path(__file__).resolve().parent / "static"
#: Served without a session or token: the login itself.
OPEN_PATHS = frozenset({"/login"})
#: The shell's headers: scripts, styles and requests from this origin only (an injected <script src> or a
#: fetch to another site does nothing); images and sounds also from data:/blob: URLs (pasted and dropped
#: files); never framed by another page (clickjacking); no Referer leaves the page.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_page(path: str) -> bool:
    """Whether a path is the page (answered in HTML) rather than an API (answered in JSON)."""
    return not path.startswith(("/v1/", "/api/")) and path not in ("/health", "/metrics")


def refusal_page(status: int, message: str) -> HTMLResponse:
    """The page's answer to a browser without a session: what to do, in a sentence."""
    body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>omnid</title>"
            f"<body style='font:16px system-ui;margin:3em'><h1>omnid</h1><p>{html.escape(message)}</p>"
            "<p>Open it from the menubar (<b>Ask…</b>), or run <code>omni web</code>.</p></body></html>")
    return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, "Content-Security-Policy":
                                                           "default-src 'none'; style-src 'unsafe-inline'"})


def routes(logins: Logins, status: StatusSource) -> list[BaseRoute]:
    """Every route of the shell and its /api/status."""
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def login(request: Request) -> Response:
        session = logins.redeem(request.query_params.get("once", ""))
        if session is None:
            return refusal_page(401, "This login link was used already or has expired.")
        return RedirectResponse("/", status_code=303, headers={"Set-Cookie": session_cookie(session),
                                                                "Referrer-Policy": "no-referrer",
                                                                "Cache-Control": "no-store"})

    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *api_status.routes(status),
    ]
