"""Reading a client's PDF in a child process with a CPU, memory and time budget per page, killed at will.

Why a process: pypdf is pure Python and can be made to work for hours by a small file (a 135 KB PDF whose 500
pages share one 70 MB content stream cost ~21 CPU-seconds a page), and a thread inside it cannot be stopped:
SIGTERM waited 22.7 s for the page in progress. A child can be killed the moment the client goes away or the
daemon stops, its RLIMIT_CPU ends a page that needs more than PAGE_CPU_SECONDS of CPU, its RLIMIT_DATA bounds
the memory a page may take, and whatever it meets only ever costs the child.

The child is `python -m omnid.modalities.pdf_isolated`, reading the request on stdin and writing one framed
message a page on stdout: a JSON header, then the page's scan as raw RGB already downscaled to the size the
store keeps. Nothing it sends is unpickled or executed. Pages that show the same image are sent once and share
one Image in the parent (a 53 KB PDF whose pages share one 4000x4000 image held 12.5 MB a page); the scans the
parent holds are bounded by MAX_SCAN_BYTES, counted once per distinct image.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image

from omnid.modalities.documents import DEFAULT_MAX_PAGES, DocumentError, Page, PageOverLimit, PdfDocument, TooManyPages
from omnid.modalities.images import image_segment
from omnid.models.base import OverLimit

log = logging.getLogger(__name__)

#: CPU one page may take in the child (a dense real page takes well under a second), and the whole document.
PAGE_CPU_SECONDS = 10
DOCUMENT_CPU_SECONDS = 120
#: Wall-clock time one page may take (the CPU limit is the real bound; this one covers a machine so loaded that
#: the child gets no CPU at all, and opening the file).
PAGE_WALL_SECONDS = 60.0
#: Memory the child may allocate beyond the PDF itself (decoding one 100-megapixel scan needs ~0.5 GB).
CHILD_MEMORY_BYTES = 2 << 30
#: Decoded scans of one document held by the daemon, each distinct image counted once: a 500-page book
#: scanned at the store's 1536 px fits (~2.7 GB).
MAX_SCAN_BYTES = 3 << 30

_HEADER = struct.Struct(">I")
_live: set["IsolatedPdf"] = set()
_live_lock = threading.Lock()


class ReaderStopped(RuntimeError):
    """The daemon is stopping and killed the reader (UNAVAILABLE)."""


class IsolatedPdf:
    """PdfDocument's interface (page_count, pages()), read by a child process; close() kills it."""

    def __init__(self, data: bytes, *, password: str = "", max_pages: int = DEFAULT_MAX_PAGES,
                 store_max_side: int = 1536) -> None:
        self._stopped = False
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with _live_lock:
            _live.add(self)
        try:
            request = {"password": password, "max_pages": max_pages, "max_side": store_max_side,
                       "memory": CHILD_MEMORY_BYTES + 2 * len(data), "cpu": PAGE_CPU_SECONDS,
                       "cpu_total": DOCUMENT_CPU_SECONDS}
            assert self._proc.stdin is not None
            try:
                _send(self._proc.stdin, request, data)
                self._proc.stdin.close()
            except BrokenPipeError:  # the child is gone already: _receive says how it ended
                pass
            self.page_count: int = self._receive("opening the PDF")[0]["page_count"]
        except BaseException:
            self.close()
            raise

    def pages(self) -> Iterator[Page]:
        """Every page in order; the child is closed when the iteration ends, however it ends."""
        shown: dict[int, Image.Image] = {}  # page number -> the scan first sent with it
        scan_bytes = 0
        try:
            for _ in range(self.page_count):
                header, raw = self._receive("reading a page")
                number = header["number"]
                image = None
                if header.get("same_as"):
                    image = shown[header["same_as"]]
                elif header.get("shape"):
                    height, width = header["shape"]
                    scan_bytes += len(raw)
                    if scan_bytes > MAX_SCAN_BYTES:
                        raise OverLimit(f"the PDF's scanned pages take over {MAX_SCAN_BYTES >> 20} MB decoded by "
                                        f"page {number}; the limit is {MAX_SCAN_BYTES >> 20} MB a document")
                    image = shown[number] = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
                yield Page(number, header["kind"], header["text"], image)
        finally:
            self.close()

    def close(self) -> None:
        """Kill the child (if it still runs) and reap it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        with _live_lock:
            _live.discard(self)

    def stop(self) -> None:
        """From another thread: end the reading now (the thread waiting on the child gets ReaderStopped)."""
        self._stopped = True
        if self._proc.poll() is None:
            self._proc.kill()

    def _receive(self, doing: str) -> tuple[dict[str, Any], bytes]:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + PAGE_WALL_SECONDS
        raw = _read_exactly(self._proc.stdout, _HEADER.size, deadline)
        if raw is None and time.monotonic() < deadline:  # the child closed its end: let it finish exiting
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        if raw is not None:
            header = json.loads(_read_exactly(self._proc.stdout, _HEADER.unpack(raw)[0], deadline) or b"{}")
            payload = _read_exactly(self._proc.stdout, header.get("payload", 0), deadline) or b""
            if "error" not in header:
                return header, payload
            raise _ERRORS.get(header["error"], DocumentError)(header["message"])
        if self._stopped:
            raise ReaderStopped("the daemon is shutting down")
        if self._proc.poll() is None:
            raise PageOverLimit(f"{doing} took over {PAGE_WALL_SECONDS:.0f} s; the limit is "
                                f"{PAGE_WALL_SECONDS:.0f} s a page")
        code = self._proc.wait()
        if code == -signal.SIGXCPU:
            raise PageOverLimit(f"{doing} needed more CPU than the daemon gives a PDF: {PAGE_CPU_SECONDS} s a "
                                f"page, {DOCUMENT_CPU_SECONDS} s a document")
        raise DocumentError(f"the PDF reader ended while {doing} (exit status {code})")


def stop_all() -> None:
    """Kill every reader now (the daemon is stopping): their calls end at once instead of after the page."""
    with _live_lock:
        readers = list(_live)
    for reader in readers:
        reader.stop()


_ERRORS: dict[str, type[Exception]] = {"document": DocumentError, "over_limit": OverLimit}


def _read_exactly(stream: IO[bytes], n: int, deadline: float) -> bytes | None:
    """n bytes from the child, or None if it closed its end (exited, was killed) or the deadline passed."""
    chunks, left, fd = [], n, stream.fileno()
    while left:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(stream: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    encoded = json.dumps({**header, "payload": len(payload)}).encode()
    stream.write(_HEADER.pack(len(encoded)) + encoded)
    stream.write(payload)
    stream.flush()


# -- the child ---------------------------------------------------------------------------------------------------


def _child() -> None:
    """Read the request from stdin, answer on stdout; exits when done, on any error, or when a limit is hit."""
    if sys.platform == "linux":  # die with the daemon, even one killed by SIGKILL
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    size = _HEADER.unpack(inp.read(_HEADER.size))[0]
    request = json.loads(inp.read(size))
    data = inp.read(request["payload"])
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (request["memory"], resource.getrlimit(resource.RLIMIT_DATA)[1]))
    except (ValueError, OSError):
        pass  # not allowed or not enforced here (macOS): the CPU and time limits still hold
    try:
        _budget_cpu(request["cpu"], request["cpu_total"])
        pdf = PdfDocument(data, password=request["password"], max_pages=request["max_pages"])
        del data
        _send(out, {"page_count": pdf.page_count})
        sent: dict[int, int] = {}  # id of a scan already sent -> the page it was sent with
        for page in pdf.pages():
            header: dict[str, Any] = {"number": page.number, "kind": page.kind, "text": page.text}
            raw = b""
            if page.image is not None:
                if id(page.image) in sent:
                    header["same_as"] = sent[id(page.image)]
                else:
                    rgb = image_segment(page.image, request["max_side"]).rgb
                    header["shape"], raw = rgb.shape[:2], rgb.tobytes()
                    sent[id(page.image)] = page.number
            _send(out, header, raw)
            _budget_cpu(request["cpu"], request["cpu_total"])
    except TooManyPages as exc:
        _send(out, {"error": "over_limit", "message": str(exc)})
    except OverLimit as exc:
        _send(out, {"error": "over_limit", "message": str(exc)})
    except DocumentError as exc:
        _send(out, {"error": "document", "message": str(exc)})
    except MemoryError:
        _send(out, {"error": "over_limit", "message": f"reading the PDF needed over {request['memory'] >> 20} MB "
                                                      "of memory; the limit is that much a document"})


def _budget_cpu(seconds: int, total: int) -> None:
    """The next page may use `seconds` more CPU seconds, and the child `total` in all: past that the kernel
    sends SIGXCPU, which ends the child."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = min(int(usage.ru_utime + usage.ru_stime) + 1 + seconds, total)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


if __name__ == "__main__":
    _child()
