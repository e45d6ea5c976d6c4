"""Filling a disk for real (on the conftest's `small_disk` tmpfs), for the tests of what a full disk does."""
from __future__ import annotations

import errno
from pathlib import Path


def fill_disk(folder: Path) -> Path:
    """Write zeros into `folder`/filler until the file system says it is full (ENOSPC); returns the file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
