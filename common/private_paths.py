"""Folders, sockets and token files that only this user controls: created private, checked before trusted.

Why both the daemon and the client check: the default socket lives at a guessable name
(/tmp/omnid-$UID/omnid.sock without XDG_RUNTIME_DIR). Another user who creates that folder first, or who can
write a folder the socket lies in, can listen there himself, and a client that connects hands him its
prompts; or he can rename our socket away and put his in its place. So before listening or connecting:
  * the socket's folder must belong to this user (or root) and nobody else may write it; a sticky folder
    such as /tmp is fine, since there others cannot rename or remove our files;
  * an existing socket must be a socket, belong to this user and not be writable (connectable) by others.

Folders are created 0700 by paths.private_dir; a folder that already exists is someone's choice and is
checked here, never changed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(PermissionError):
    """A folder, socket or token file another user owns or can write; the message names it and says why."""


def check_private_dir(path: Path) -> None:
    """Raise UnsafePath unless `path` is a folder of this user (or root) that no one else can write
    (or a sticky one, like /tmp). A missing folder raises FileNotFoundError."""
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.getuid(), 0):
        # Whoever made the link can point it elsewhere between this check and the connect.
        raise UnsafePath(f"refusing {path}: it is a link made by uid {link.st_uid}, not by you (uid {os.getuid()})")
    info = os.stat(path)  # through a link of ours: what matters is the folder the socket ends up in
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"refusing {path}: it is not a folder")
    if info.st_uid not in (os.getuid(), 0):
        raise UnsafePath(f"refusing {path}: it belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                         "another user may have made it to receive your requests")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"refusing {path}: other users can write it (mode {stat.S_IMODE(info.st_mode):04o}), "
                         "so they could replace the socket in it; use a folder only you can write")


def check_socket(path: Path) -> None:
    """Raise UnsafePath unless `path` lies in a private folder (check_private_dir) and, if it exists, is a socket
    of this user that others cannot connect to. A missing folder raises FileNotFoundError; a missing socket in
    a private folder is fine (no one else can put one there)."""
    check_private_dir(path.parent)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafePath(f"refusing {path}: it is not a socket")
    if info.st_uid != os.getuid():
        raise UnsafePath(f"refusing {path}: the socket belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                         "another user may be listening there to receive your requests")
    if info.st_mode & 0o022:
        raise UnsafePath(f"refusing {path}: other users can connect to the socket (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}); an omnid socket is 0600")


def socket_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the socket at `path`, or None: what lets a daemon remove only the socket it made."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


#: A token shorter than this is guessable enough to refuse (16 bytes of urlsafe base64 are 96 bits).
MIN_TOKEN_BYTES = 16


def read_private_token(path: Path) -> str:
    """The token in an existing file that only this user can read; UnsafePath / ValueError otherwise.

    The checks are made on the opened descriptor, so the file checked is the file read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"refusing the token file {path}: it is not a regular file")
        if info.st_uid != os.getuid():
            raise UnsafePath(f"refusing the token file {path}: it belongs to uid {info.st_uid}, not to you "
                             f"(uid {os.getuid()})")
        if info.st_mode & 0o077:
            raise UnsafePath(f"refusing the token file {path}: other users can read or write it (mode "
                             f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 {path}")
        raw = f.read(4096).strip()
    if len(raw) < MIN_TOKEN_BYTES:
        raise ValueError(f"the token in {path} is {len(raw)} bytes; at least {MIN_TOKEN_BYTES} are needed "
                         "(delete the file and omnid writes a new random one)")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"the token in {path} is not ASCII text (it travels in an HTTP header)") from None
