"""Real PDFs for the document tests and bench/documents.py, made with reportlab (no files checked in).

A "report" has text pages (each naming a unique fact, so a question can be aimed at one page), table pages
(a reportlab Table: cells drawn separately, as real tables are) and image-only "scanned" pages (a rendered
picture of text drawn over the whole page, with no text layer), in a fixed pattern over the page numbers.
"""
from __future__ import annotations

import io

from PIL import Image, ImageDraw
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas
from reportlab.platypus import Table

WIDTH, HEIGHT = letter
WORDS = ("harbor lantern copper meadow quartz violet timber falcon orchid glacier ember saffron canyon "
         "willow cobalt tundra juniper marble beacon thistle").split()


def page_kind(number: int) -> str:
    """The pattern of a report: every 10th page scanned, every page ending in 5 a table, the rest text."""
    if number % 10 == 0:
        return "image"
    if number % 10 == 5:
        return "table"
    return "text"


def fact(number: int) -> str:
    """The unique sentence on a text page, for aiming a question (and the relevance ranking) at it."""
    return f"The {WORDS[number % len(WORDS)]} code of page {number} is {number * 7919 % 100000}."


def table_rows(number: int) -> list[list[str]]:
    return [["Item", "Quantity", "Price"]] + [[f"{WORDS[(number + i) % len(WORDS)]}-{i}", str(i + number),
                                                f"{(i + 1) * 1.25 + number:.2f}"] for i in range(6)]


def scan_image(number: int, size: tuple[int, int] = (425, 550)) -> Image.Image:
    """A grey 'scan' of a page of text (an image only: the PDF has no text layer for it)."""
    image = Image.new("L", size, 235)
    draw = ImageDraw.Draw(image)
    for i in range(24):
        draw.text((20, 20 + 21 * i), f"Scanned page {number}, line {i}: {WORDS[(number + i) % len(WORDS)]}", fill=20)
    return image


def make_report(pages: int = 100, *, lines: int = 30, scan_size: tuple[int, int] = (425, 550)) -> bytes:
    """A PDF of `pages` pages in the page_kind pattern; text pages carry their fact and `lines` more lines."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=letter, invariant=1)
    for number in range(1, pages + 1):
        kind = page_kind(number)
        if kind == "image":
            pdf.drawImage(ImageReader(scan_image(number, scan_size)), 0, 0, width=WIDTH, height=HEIGHT)
        elif kind == "table":
            pdf.drawString(72, HEIGHT - 72, f"Inventory table, page {number}")
            table = Table(table_rows(number))
            table.wrapOn(pdf, WIDTH - 144, HEIGHT)
            table.drawOn(pdf, 72, HEIGHT - 250)
        else:
            y = HEIGHT - 72
            pdf.drawString(72, y, fact(number))
            for i in range(lines):
                y -= 18
                words = " ".join(WORDS[(number * i + k) % len(WORDS)] for k in range(9))
                pdf.drawString(72, y, f"Line {i} of page {number}: {words}.")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def make_blank(pages: int = 0) -> bytes:
    """A valid PDF with `pages` empty pages (0 = no pages at all)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(WIDTH, HEIGHT)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def encrypt(data: bytes, password: str) -> bytes:
    """The same PDF, AES-256 encrypted with a user password."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(password, algorithm="AES-256")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()
