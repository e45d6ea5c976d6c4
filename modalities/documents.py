"""Reading a PDF into pages the model can take: text with its rows kept, or the page's image when scanned.

pypdf does the reading, in the daemon's Python, so a corrupt, truncated or hostile file raises a clear
`DocumentError` (INVALID_ARGUMENT) instead of reaching anything that could take the daemon down. No model is
called here: turning pages into prompt segments and counting their tokens is the RPC layer's job.

Why a visitor instead of pypdf's layout mode for tables: the plain extraction puts every table cell on its
own line (the rows are lost), and layout mode costs a second, slower pass. The text visitor of the same single
pass gives each fragment's position, so a page whose lines hold several separated short fragments (a table)
is rebuilt row by row with " | " between cells, at no extra extraction cost. Other pages keep pypdf's text.

Why the largest embedded image for scanned pages: pypdf cannot render a page, and an image-only page is in
practice one scan covering the page; the vision encoder sees that image.
"""
from __future__ import annotations

import io
import logging
import statistics
from dataclasses import dataclass
from typing import Iterator, Literal

from PIL import Image
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

from omnid.models.base import InputError

#: Pages a document may have unless the daemon is configured otherwise.
DEFAULT_MAX_PAGES = 500

# pypdf logs every repairable oddity of a malformed file as a warning; the caller gets one clear error instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class DocumentError(InputError):
    """The file is not a readable PDF (not a PDF, corrupt, truncated, encrypted without the right password)."""


class TooManyPages(DocumentError):
    """The PDF has more pages than the daemon takes (RESOURCE_EXHAUSTED, not a malformed input)."""

    def __init__(self, pages: int, limit: int) -> None:
        super().__init__(f"the PDF has {pages} pages; this daemon takes at most {limit}")
        self.pages = pages
        self.limit = limit


@dataclass(frozen=True)
class Page:
    """One page: its text (kind "text"), or, for an image-only page (kind "image"), the scan itself."""

    number: int  # 1-based
    kind: Literal["text", "image"]
    text: str
    image: Image.Image | None = None


class PdfDocument:
    """An opened, decrypted PDF whose page count is within the limit; its pages are read one at a time.

    Opening checks everything that can be checked cheaply (header, structure, password, page count), so a
    bad file is refused before any page is read; `pages()` then yields pages lazily for progress reporting.
    """

    def __init__(self, data: bytes, *, password: str = "", max_pages: int = DEFAULT_MAX_PAGES) -> None:
        if not data:
            raise DocumentError("the file is empty")
        if b"%PDF-" not in data[:1024]:
            raise DocumentError("the file is not a PDF (no %PDF- header)")
        try:
            self._reader = PdfReader(io.BytesIO(data))
            if self._reader.is_encrypted and not self._reader.decrypt(password):
                if password:
                    raise DocumentError("the password does not open this encrypted PDF")
                raise DocumentError("the PDF is encrypted: give its password")
            self.page_count = len(self._reader.pages)
        except DocumentError:
            raise
        except DependencyError as exc:
            raise DocumentError(f"the PDF uses encryption this daemon cannot open: {exc}") from None
        except Exception as exc:  # pypdf raises many types on malformed input; all mean the same to the user
            raise DocumentError(f"the PDF is corrupt or truncated: {_describe(exc)}") from None
        if self.page_count == 0:
            raise DocumentError("the PDF has no pages")
        if self.page_count > max_pages:
            raise TooManyPages(self.page_count, max_pages)

    def pages(self) -> Iterator[Page]:
        """Every page in order; DocumentError naming the page when one cannot be read."""
        for number in range(1, self.page_count + 1):
            try:
                page = _read_page(self._reader, number)
            except FileNotDecryptedError:
                raise DocumentError("the PDF is encrypted: give its password") from None
            except Exception as exc:
                raise DocumentError(f"page {number} of the PDF could not be read: {_describe(exc)}") from None
            yield page


def read_pdf(data: bytes, *, password: str = "", max_pages: int = DEFAULT_MAX_PAGES) -> list[Page]:
    """Every page of the PDF, in order."""
    return list(PdfDocument(data, password=password, max_pages=max_pages).pages())


def _read_page(reader: PdfReader, number: int) -> Page:
    page = reader.pages[number - 1]
    fragments: list[_Fragment] = []

    def visit(text: str, cm: list[float], tm: list[float], _font: object, size: float) -> None:
        if text.strip():
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            fragments.append(_Fragment(x, y, abs(size) or 10.0, text.strip()))

    text = page.extract_text(visitor_text=visit) or ""
    if text.strip():
        rows = _rows(fragments)
        if _looks_like_table(rows):
            text = "\n".join(" | ".join(cells) for cells in (_cells(row) for row in rows))
        return Page(number, "text", text.strip())
    image = _largest_image(page)
    if image is None:
        return Page(number, "text", "")  # a blank page: kept so page numbers stay true
    return Page(number, "image", "", image)


def _largest_image(page) -> Image.Image | None:
    best, best_pixels = None, 0
    for embedded in page.images:
        image = embedded.image
        if image is not None and image.width * image.height > best_pixels:
            best, best_pixels = image, image.width * image.height
    return best


@dataclass(frozen=True)
class _Fragment:
    x: float
    y: float
    size: float
    text: str

    @property
    def end(self) -> float:
        """Where the fragment ends, estimated (half an em per character): enough to tell cells from words."""
        return self.x + 0.5 * self.size * len(self.text)


def _rows(fragments: list[_Fragment]) -> list[list[_Fragment]]:
    """Fragments grouped into lines (top to bottom), each line left to right."""
    rows: list[list[_Fragment]] = []
    for fragment in sorted(fragments, key=lambda f: -f.y):
        if rows and abs(rows[-1][0].y - fragment.y) <= 0.4 * fragment.size:
            rows[-1].append(fragment)
        else:
            rows.append([fragment])
    return [sorted(row, key=lambda f: f.x) for row in rows]


def _cells(row: list[_Fragment]) -> list[str]:
    """A line's fragments joined into cells: a gap wider than half an em starts a new cell."""
    cells = [row[0].text]
    for prev, frag in zip(row, row[1:]):
        if frag.x - prev.end > 0.5 * frag.size:
            cells.append(frag.text)
        else:
            cells[-1] += " " + frag.text
    return cells


def _looks_like_table(rows: list[list[_Fragment]]) -> bool:
    """At least two lines of several short cells (two columns of prose have long cells and stay as they are)."""
    cell_rows = [cells for cells in (_cells(row) for row in rows) if len(cells) >= 2]
    if len(cell_rows) < 2:
        return False
    return statistics.median(len(c) for cells in cell_rows for c in cells) <= 30


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

