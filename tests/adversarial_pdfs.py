"""Small PDFs that cost a reader far more than their size: pages sharing one huge content stream, pages sharing
one large image, pages whose text is slow to extract. Written with pypdf's writer (reportlab gives the font)."""
from __future__ import annotations

import io
import zlib

from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject, StreamObject
from reportlab.pdfgen import canvas

LINE = b"BT /F1 12 Tf 72 700 Td (Lorem ipsum dolor sit amet) Tj ET\n"


def _font_page():
    """A one-page PDF's page with Helvetica as /F1 in its resources."""
    out = io.BytesIO()
    c = canvas.Canvas(out)
    c.setFont("Helvetica", 12)
    c.drawString(10, 10, "x")
    c.showPage()
    c.save()
    return PdfReader(io.BytesIO(out.getvalue())).pages[0]


def _content(writer: PdfWriter, data: bytes):
    stream = DecodedStreamObject()
    stream.set_data(data)
    return writer._add_object(stream.flate_encode())


def shared_content(pages: int, content_bytes: int) -> bytes:
    """`pages` pages that all draw ONE flate-compressed content stream of `content_bytes` text operators."""
    writer = PdfWriter()
    ref = _content(writer, LINE * (content_bytes // len(LINE)))
    base = _font_page()
    for _ in range(pages):
        writer.add_page(base)[NameObject("/Contents")] = ref
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def slow_pages(pages: int, content_bytes: int) -> bytes:
    """`pages` pages, each with its OWN content stream of `content_bytes` text operators (slow to extract, and
    no page can reuse another's text)."""
    writer = PdfWriter()
    base = _font_page()
    for number in range(pages):
        head = f"BT /F1 12 Tf 72 720 Td (page {number}) Tj ET\n".encode()
        writer.add_page(base)[NameObject("/Contents")] = _content(writer, head + LINE * (content_bytes // len(LINE)))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def shared_image(pages: int, side: int) -> bytes:
    """`pages` image-only pages that all show ONE grey side x side image XObject (it compresses to almost
    nothing: a few KB of file, side * side * 3 bytes decoded)."""
    writer = PdfWriter()
    image = StreamObject()
    image._data = zlib.compress(bytes(range(256)) * (side * side // 256) + bytes(side * side % 256), 9)
    image.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Image"),
                  NameObject("/Width"): NumberObject(side), NameObject("/Height"): NumberObject(side),
                  NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                  NameObject("/BitsPerComponent"): NumberObject(8), NameObject("/Filter"): NameObject("/FlateDecode")})
    image_ref = writer._add_object(image)
    resources = writer._add_object(DictionaryObject({NameObject("/XObject"): DictionaryObject(
        {NameObject("/Im0"): image_ref})}))
    content = _content(writer, b"q 612 0 0 792 0 0 cm /Im0 Do Q\n")
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = resources
        page[NameObject("/Contents")] = content
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()

