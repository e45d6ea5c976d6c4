"""The web page's login: one-time codes traded for a session cookie, so the token never sits in a URL.

The daemon's token (what /v1 clients send as `Authorization: Bearer`) cannot be typed into a browser, and a
URL carrying it would stay in the history. Instead a client that already holds the token (the menubar through
the CreateLoginLink RPC, `omni web`) asks for a link `/login?once=CODE`: the code is random, works once and
only for a minute. Opening it answers with a random session id in an HttpOnly, SameSite=Strict cookie (no
script can read it, no other site can send it) and a redirect to the page. Sessions live in memory: a
restarted daemon asks for a new login.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Callable

#: The cookie's name; its value is a session id.
COOKIE = "omnid_session"
#: How long a one-time code may wait to be used.
CODE_SECONDS = 60.0
#: How long a session lasts from its login (a day of use, then the menubar logs in again).
SESSION_SECONDS = 24 * 3600.0


def _key(secret: str) -> bytes:
    """Codes and sessions are kept by their hash: a lookup takes the same time whatever a guess shares with
    a real one (no timing leak through the dict), and memory never holds them in the clear."""
    return hashlib.sha256(secret.encode("latin-1", "replace")).digest()


class Logins:
    """One-time codes and the sessions they opened; thread-safe (codes are minted on gRPC threads and
    redeemed on the HTTP server's event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[bytes, float] = {}     # code hash -> expiry
        self._sessions: dict[bytes, float] = {}  # session hash -> expiry

    def mint(self) -> str:
        """A new one-time code."""
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            self._codes[_key(code)] = self._clock() + CODE_SECONDS
        return code

    def redeem(self, code: str) -> str | None:
        """The session id a valid, unused code opens (the code is spent); None for any other code."""
        with self._lock:
            self._forget_expired()
            if self._codes.pop(_key(code), None) is None:
                return None
            session = secrets.token_urlsafe(32)
            self._sessions[_key(session)] = self._clock() + SESSION_SECONDS
            return session

    def valid(self, session: str) -> bool:
        with self._lock:
            expiry = self._sessions.get(_key(session))
            return expiry is not None and expiry > self._clock()

    def _forget_expired(self) -> None:
        now = self._clock()
        for table in (self._codes, self._sessions):
            for key in [k for k, expiry in table.items() if expiry <= now]:
                del table[key]


def session_cookie(session: str) -> str:
    """The Set-Cookie value: HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
    for the whole origin, until the session ends."""
    return f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_SECONDS)}"


def cookie_session(cookie_header: bytes) -> str:
    """The session id in a Cookie header ("" without one)."""
    for pair in cookie_header.decode("latin-1").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE:
            return value.strip()
    return ""
