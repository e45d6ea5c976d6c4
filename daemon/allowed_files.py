"""Files a client names by path (`--allow-read`): checked and opened in one step, then read only through the
descriptor.

Why not "resolve, check, then open by name": between the check and the open, anyone who can write inside an
allowed folder can swap a folder on the path for a symlink to somewhere else, and the daemon reads that
instead (issue 19: 11 reads outside the allowed folders in 60 tries). Here the path is resolved once, only to
find which allowed folder it lies in; then it is opened one component at a time from that folder's
descriptor with O_NOFOLLOW, so a component that became a link since fails to open instead of being followed.
Callers read the returned file object and never open the name again.

Messages name the path as the client gave it, never what a symlink resolved to: where a link outside the
allowed folders points is not the client's business.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from omnid.models.base import InputError


class PermissionDenied(PermissionError):
    """A path outside what the daemon may read: PERMISSION_DENIED."""


@dataclass
class AllowedFile:
    """An opened regular file under an allowed folder; close it (or use `with`) when done."""

    file: BinaryIO
    #: The last component of the path the client gave (a title or file name to store).
    name: str
    size: int

    def read(self, limit: int) -> bytes:
        """At most `limit` bytes from the start (the caller checks `size` against its own limit first)."""
        return self.file.read(limit)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "AllowedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused below as not a regular file.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_allowed(path: str, roots: Sequence[Path]) -> AllowedFile:
    """Open `path` for reading if it lies under one of `roots`.

    PermissionDenied outside them (or when the path changed into a link while it was opened),
    FileNotFoundError when it is missing, InputError for a symlink loop, a name too long, a folder or anything
    else that is not a regular file.
    """
    shown = str(path)
    if not shown:
        raise InputError("the path is empty")
    if "\0" in shown:
        raise InputError("the path contains a NUL character")
    try:
        resolved = Path(os.path.realpath(Path(shown).expanduser(), strict=True))
    except OSError as exc:
        raise _path_error(exc, shown) from None
    for root in roots:
        try:
            real_root = Path(os.path.realpath(Path(root).expanduser(), strict=True))
        except OSError:
            continue  # an allowed folder that is gone allows nothing
        if resolved.is_relative_to(real_root):
            return _open_below(real_root, resolved.relative_to(real_root).parts, shown)
    allowed = ", ".join(str(p) for p in roots) or "none (start omnid with --allow-read DIR)"
    raise PermissionDenied(f"the daemon may not read {shown}; allowed folders: {allowed}")


def _open_below(root: Path, parts: tuple[str, ...], shown: str) -> AllowedFile:
    """Walk `parts` from `root`'s descriptor without following any link, and open the last one as a file."""
    if not parts:
        raise InputError(f"{shown} is a folder, not a file")
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fds[-1]))
        fd = os.open(parts[-1], _FILE, dir_fd=fds[-1])
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):  # resolved without links a moment ago
            raise PermissionDenied(f"{shown} changed while it was being opened (a folder or file on the path was "
                                   "replaced by a link); not read") from None
        raise _path_error(exc, shown) from None
    finally:
        for d in fds:
            os.close(d)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise InputError(f"{shown} is {what}; give a file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return AllowedFile(os.fdopen(fd, "rb"), Path(shown).name, info.st_size)
    except BaseException:
        os.close(fd)
        raise


def _path_error(exc: OSError, shown: str) -> Exception:
    """The clear error for an OSError met while resolving or opening a client's path."""
    if exc.errno == errno.ENOENT or exc.errno == errno.ENOTDIR:
        return FileNotFoundError(f"no such file: {shown}")
    if exc.errno == errno.ELOOP:
        return InputError(f"{shown}: too many levels of symbolic links (a symlink loop)")
    if exc.errno == errno.ENAMETOOLONG:
        return InputError(f"{_short(shown)}: the path or one of its names is too long")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"the daemon's user may not read {shown}")
    return InputError(f"{shown} cannot be opened: {exc.strerror}")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."
