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
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from PIL import Image
from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError
from pypdf.generic import DictionaryObject

from omnid.modalities.images import MAX_PIXELS
from omnid.models.base import InputError, OverLimit

#: Pages a document may have unless the daemon is configured otherwise.
DEFAULT_MAX_PAGES = 500
#: Largest decompressed content stream of one page, and of all the distinct ones of a document: a 135 KB PDF
#: inflated to 70 MB of drawing operators a page (text extraction costs ~2 CPU-seconds a MB, more for larger
#: streams); a page of dense text is well under 100 KB, a detailed map a few MB.
MAX_PAGE_CONTENT_BYTES = 8 << 20
MAX_DOCUMENT_CONTENT_BYTES = 64 << 20
#: Text of a whole document, every page counted (pages drawing one shared stream each hold its text): every
#: character is tokenized on the decoder and stored. A dense 500-page book has ~1.5 M.
MAX_DOCUMENT_TEXT_CHARS = 8_000_000

# pypdf logs every repairable oddity of a malformed file as a warning; the caller gets one clear error instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class DocumentError(InputError):
    """The file is not a readable PDF (not a PDF, corrupt, truncated, encrypted without the right password)."""


class PageOverLimit(OverLimit):
    """A page costs more to read than the daemon gives one page (its content, its image): RESOURCE_EXHAUSTED."""


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
        """Every page in order; DocumentError naming the page when one cannot be read, PageOverLimit when it
        is too costly to. Pages that show the same image share one decoded Image (decoded once)."""
        scans: dict[object, Image.Image | None] = {}
        read = _Read()
        for number in range(1, self.page_count + 1):
            try:
                page = _read_page(self._reader, number, scans, read)
            except PageOverLimit:
                raise
            except FileNotDecryptedError:
                raise DocumentError("the PDF is encrypted: give its password") from None
            except Exception as exc:
                raise DocumentError(f"page {number} of the PDF could not be read: {_describe(exc)}") from None
            yield page


def read_pdf(data: bytes, *, password: str = "", max_pages: int = DEFAULT_MAX_PAGES) -> list[Page]:
    """Every page of the PDF, in order."""
    return list(PdfDocument(data, password=password, max_pages=max_pages).pages())


@dataclass
class _Read:
    """What a document's pages have cost so far, and the text of pages whose content and resources are shared
    objects (another page drawing the same stream with the same fonts reads the same: it is not parsed again)."""

    content_bytes: int = 0
    text_chars: int = 0
    texts: dict[tuple[int, str], str] = field(default_factory=dict)


def _read_page(reader: PdfReader, number: int, scans: dict[object, Image.Image | None], read: _Read) -> Page:
    page = reader.pages[number - 1]
    contents_id, resources = _idnum(page, "/Contents"), _resources_key(page)
    key = (contents_id, resources) if contents_id is not None and resources is not None else None
    if key is not None and key in read.texts:
        return _page_from_text(page, number, read.texts[key], scans, read)
    contents = page.get_contents()
    size = len(contents.get_data()) if contents is not None else 0
    if size > MAX_PAGE_CONTENT_BYTES:
        raise PageOverLimit(f"page {number}'s content is {size / 2**20:.1f} MB uncompressed; the limit is "
                            f"{MAX_PAGE_CONTENT_BYTES >> 20} MB a page")
    read.content_bytes += size
    if read.content_bytes > MAX_DOCUMENT_CONTENT_BYTES:
        raise PageOverLimit(f"the PDF's pages hold over {MAX_DOCUMENT_CONTENT_BYTES >> 20} MB of content by page "
                            f"{number}; the limit is {MAX_DOCUMENT_CONTENT_BYTES >> 20} MB a document")
    fragments: list[_Fragment] = []

    def visit(text: str, cm: list[float], tm: list[float], _font: object, size: float) -> None:
        if text.strip():
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            fragments.append(_Fragment(x, y, abs(size) or 10.0, text.strip()))

    text = (page.extract_text(visitor_text=visit) or "").strip()
    if text:
        rows = _rows(fragments)
        if _looks_like_table(rows):
            text = "\n".join(" | ".join(cells) for cells in (_cells(row) for row in rows)).strip()
    if key is not None:
        read.texts[key] = text
    return _page_from_text(page, number, text, scans, read)


def _idnum(page: Any, key: str) -> int | None:
    """The object number of the page's entry when it is a reference (what pages share), else None."""
    return getattr(page.raw_get(key), "idnum", None) if key in page else None


def _resources_key(page: Any) -> str | None:
    """What identifies the page's fonts and other resources: their object number, or the page's own small
    resource dictionary as written (references in it print with their numbers); None when inherited or large."""
    if "/Resources" not in page:
        return None
    raw = page.raw_get("/Resources")
    if getattr(raw, "idnum", None) is not None:
        return f"#{raw.idnum}"
    written = repr(raw)
    return written if len(written) <= 65536 else None


def _page_from_text(page: Any, number: int, text: str, scans: dict[object, Image.Image | None],
                    read: _Read) -> Page:
    """A page of text, or, with none, of its scan (or blank)."""
    read.text_chars += len(text)
    if read.text_chars > MAX_DOCUMENT_TEXT_CHARS:
        raise PageOverLimit(f"the PDF holds over {MAX_DOCUMENT_TEXT_CHARS} characters of text by page {number}; "
                            f"the limit is {MAX_DOCUMENT_TEXT_CHARS} a document")
    if text:
        return Page(number, "text", text)
    image = _largest_image(page, number, scans)
    if image is None:
        return Page(number, "text", "")  # a blank page: kept so page numbers stay true
    return Page(number, "image", "", image)


def _largest_image(page, number: int, scans: dict[object, Image.Image | None]) -> Image.Image | None:
    """The page's largest image, chosen by the sizes its dictionaries declare, so only that one is decoded, and
    only if it is within MAX_PIXELS; an image already decoded for another page is not decoded again."""
    declared = _declared_images(page)
    if not declared:  # inline images only: pypdf's own list (small ones, in practice)
        best, best_pixels = None, 0
        for embedded in page.images:
            image = embedded.image
            if image is not None and image.width * image.height > best_pixels:
                best, best_pixels = image, image.width * image.height
        return best
    pixels, path, ref = max(declared, key=lambda d: d[0])
    if pixels > MAX_PIXELS:
        raise PageOverLimit(f"page {number}'s image has {pixels} pixels; the limit is {MAX_PIXELS} pixels")
    if ref is None:
        return page.images[path].image
    if ref not in scans:
        scans[ref] = page.images[path].image
    return scans[ref]


def _declared_images(owner: Any, path: tuple[str, ...] = (), seen: set | None = None) -> list[tuple]:
    """(pixels, pypdf image path, identity) for each image XObject of a page (or form) and its forms, undecoded."""
    seen = set() if seen is None else seen
    found: list[tuple] = []
    resources: Any = owner.get("/Resources")
    resources = resources.get_object() if resources is not None else None
    xobjects: Any = resources.get("/XObject") if isinstance(resources, DictionaryObject) else None
    xobjects = xobjects.get_object() if xobjects is not None else None
    if not isinstance(xobjects, DictionaryObject):
        return found
    for name in list(xobjects.keys()):
        entry = xobjects[name]
        ref = getattr(xobjects.raw_get(name), "idnum", None)  # None: a direct object, not shared with a page
        if (ref is not None and ref in seen) or not hasattr(entry, "get"):
            continue
        seen.add(ref)
        if entry.get("/Subtype") == "/Image":
            width, height = int(entry.get("/Width", 0)), int(entry.get("/Height", 0))
            found.append((width * height, [*path, name] if path else name, ref))
        elif entry.get("/Subtype") == "/Form" and len(path) < 8:
            found += _declared_images(entry, (*path, name), seen)
    return found


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

