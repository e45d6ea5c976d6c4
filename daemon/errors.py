"""What went wrong serving a request, said once for every front end.

A job or a front end raises plain exceptions (InputError, QueueFull, OSError...). `classify` names the kind of
failure and the one-line message a client sees; each front end maps the kind to its own code (rpc_base to a
gRPC status, the HTTP API to an HTTP status and an OpenAI error type). Why one place: the same bad request
is then refused for the same reason whichever protocol carried it.
"""
from __future__ import annotations

import enum
import errno
import re
import sqlite3

from omnid.daemon.allowed_files import PermissionDenied
from omnid.daemon.scheduler import QueueFull, ShuttingDown
from omnid.daemon.session import Cancelled
from omnid.modalities.pdf_isolated import ReaderStopped
from omnid.models.base import ContextOverflow, EngineUnavailable, InputError, ModelLoadError, OverLimit


class NotFound(LookupError):
    """An unknown document, meeting, cache entry or device: NOT_FOUND."""


class Failure(enum.Enum):
    """Kinds of failure a client can tell apart (and act on differently)."""

    INVALID = "invalid"              # the request is wrong: fix it
    UNSUPPORTED = "unsupported"      # the request is fine but this model or daemon cannot do it
    TOO_LONG = "too_long"            # it does not fit the model's context
    OVER_LIMIT = "over_limit"        # valid, but costs more than one request is given (pixels, seconds, a page)
    BUSY = "busy"                    # the queue is full: try again later
    NO_SPACE = "no_space"            # the daemon's disk is full or over quota
    UNAVAILABLE = "unavailable"      # shutting down, the model could not be loaded, or the remote engine is gone
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    DENIED = "denied"                # a file the daemon may not read
    INTERNAL = "internal"            # the daemon's fault (logged)


#: What Python prints for an object without a readable form ("<_io.BytesIO object at 0x7f...>"): a heap address
#: is nobody's business, and says nothing to the client anyway.
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
#: OSErrors whose cause is known, with what to tell the client (never the daemon's own paths).
_OS_ERRORS = {
    errno.ENOSPC: (Failure.NO_SPACE, "the daemon's disk is full; free some space and try again"),
    errno.EDQUOT: (Failure.NO_SPACE, "the daemon's user is over its disk quota"),
    errno.ELOOP: (Failure.INVALID, "too many levels of symbolic links (a symlink loop)"),
    errno.ENAMETOOLONG: (Failure.INVALID, "a path or file name is too long"),
}


def classify(exc: BaseException) -> tuple[Failure, str]:
    """The kind of failure and the message a client sees for an exception raised while serving it."""
    kind, message = _classify(exc)
    return kind, _OBJECT_REPR.sub("the data", message)


def _classify(exc: BaseException) -> tuple[Failure, str]:
    if isinstance(exc, ContextOverflow):
        return Failure.TOO_LONG, str(exc)
    if isinstance(exc, OverLimit):
        return Failure.OVER_LIMIT, str(exc)
    if isinstance(exc, InputError):
        return (Failure.UNSUPPORTED if exc.unsupported else Failure.INVALID), str(exc)
    if isinstance(exc, QueueFull):
        return Failure.BUSY, str(exc)
    if isinstance(exc, (ShuttingDown, ReaderStopped, EngineUnavailable)):
        return Failure.UNAVAILABLE, str(exc)
    if isinstance(exc, Cancelled):
        return Failure.CANCELLED, "cancelled"
    if isinstance(exc, NotFound):
        return Failure.NOT_FOUND, str(exc)
    if isinstance(exc, PermissionDenied):
        return Failure.DENIED, str(exc)
    if isinstance(exc, ModelLoadError):  # loading again after an unload failed (the files went away?)
        return Failure.UNAVAILABLE, f"the model could not be loaded: {exc}"
    if isinstance(exc, (ValueError, TypeError)):
        return Failure.INVALID, str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return _OS_ERRORS[exc.errno]
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):  # "database or disk is full"
        return _OS_ERRORS[errno.ENOSPC]
    if isinstance(exc, FileNotFoundError):
        return Failure.NOT_FOUND, str(exc) if exc.errno is None else "no such file"
    if isinstance(exc, PermissionError):
        return Failure.DENIED, str(exc) if exc.errno is None else "permission denied"
    return Failure.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
