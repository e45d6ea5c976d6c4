"""Where omnid keeps things on this machine, shared by the daemon, its pipelines and the clients.

The socket is found the same way by `omnid serve` and `omni ask` (or through OMNID_SOCKET), so they agree
without flags; this module is tiny on purpose, so the client library needs nothing of the daemon.
"""
from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "omnid" if base else Path(f"/tmp/omnid-{os.getuid()}")


def default_socket_path() -> Path:
    return Path(os.environ["OMNID_SOCKET"]) if os.environ.get("OMNID_SOCKET") else runtime_dir() / "omnid.sock"


def default_token_path() -> Path:
    """The TCP endpoint's token, shared by `omnid serve --tcp` and `omni --tcp` ($XDG_CONFIG_HOME/omnid/token)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "omnid" / "token"


def private_dir(path: Path) -> Path:
    """Create `path` 0700 if it is missing (its parents as `mkdir -p` makes them); an existing folder is left as
    it is: it is someone's choice (`--socket /tmp/omnid.sock` must not chmod /tmp). Whether an existing folder
    is safe to use is private_paths.check_private_dir's question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return path
    os.chmod(path, 0o700)  # exactly 0700 whatever the umask
    return path
