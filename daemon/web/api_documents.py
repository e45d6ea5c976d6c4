"""The page's documents API: drop a PDF, see its pages, ask it, open the pages an answer cites.

    POST /api/documents                       multipart `file` (a PDF), optional `password`: SSE of IngestEvent
                                              as JSON ({"progress": ...} then {"done": DocumentInfo})
    GET  /api/documents                       {"documents": [DocumentInfo]}
    POST /api/documents/{id}/ask              JSON {question, first_page?, last_page?, max_tokens?}: SSE of
                                              AskDocumentEvent as JSON; the last one, {"done": Final}, carries
                                              "citations": [{"page": n}] and "pages" (the pages it was given)
    GET  /api/documents/{id}/pages/{n}        {"page", "kind", "text", "image"} (image: the scan's URL or null)
    GET  /api/documents/{id}/pages/{n}.png    the scanned page as the model saw it
    DELETE /api/documents/{id}                DeleteDocuments for that id

Ingest and answers are the gRPC handlers themselves (daemon/rpc_documents.py, through rpc_call): the same
store, jobs and prompt cache, so a PDF added here is warm for `omni doc ask` and the other way round.
"""
from __future__ import annotations

import io
import re
from typing import Any

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from omnid.daemon.errors import NotFound
from omnid.daemon.rpc_documents import MAX_PDF_BYTES, TooLarge
from omnid.daemon.web.rpc_call import CallContext, Pump, Rpcs, guarded, in_thread, json_body, sse, to_json, unary
from omnid.modalities.document_store import StoredPage
from omnid.models.base import InputError
from omnid.proto import omnid_pb2 as pb

#: How the model is told to cite (modalities/document_prompt.py): "(p. 12)", "(pp. 3-4)", "(p. 2, 5)".
_CITATION = re.compile(r"\(pp?\.\s*([0-9][0-9,\s\-–]*)\)")


def routes(rpcs: Rpcs) -> list[BaseRoute]:
    api = _DocumentsApi(rpcs)
    return [
        Route("/api/documents", guarded(api.ingest), methods=["POST"]),
        Route("/api/documents", guarded(api.list), methods=["GET"]),
        Route("/api/documents/{doc_id}/ask", guarded(api.ask), methods=["POST"]),
        Route("/api/documents/{doc_id}/pages/{number:int}.png", guarded(api.page_image), methods=["GET"]),
        Route("/api/documents/{doc_id}/pages/{number:int}", guarded(api.page), methods=["GET"]),
        Route("/api/documents/{doc_id}", guarded(api.delete), methods=["DELETE"]),
    ]


def citations(text: str, page_count: int) -> list[int]:
    """The pages an answer cites in the prompt's "(p. N)" form, in order of first mention, within the
    document (a model may name a page that does not exist: that one is no link)."""
    cited: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        for part in re.split(r"[,\s]+", match.group(1).strip()):
            first, _, last = part.replace("–", "-").partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                continue
            low, high = int(first), int(last or first)
            for page in range(low, min(high, low + 50) + 1):  # "(pp. 1-9999)" is no reason to list 9999 links
                if 1 <= page <= page_count:
                    cited[page] = None
    return list(cited)


class _DocumentsApi:
    def __init__(self, rpcs: Rpcs) -> None:
        self.rpcs = rpcs

    async def ingest(self, request: Request) -> Response:
        servicer = self.rpcs.get()
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("'file' must be an uploaded PDF (multipart/form-data)")
        if upload.size is not None and upload.size > MAX_PDF_BYTES:
            raise TooLarge(f"the PDF is {upload.size} bytes; the limit is {MAX_PDF_BYTES}")
        data = await upload.read()
        message = pb.IngestDocumentRequest(data=data, name=upload.filename or "document.pdf",
                                           password=str(form.get("password") or ""))
        return await sse(Pump(servicer.IngestDocument, message))

    async def list(self, request: Request) -> Response:
        return JSONResponse(await unary(self.rpcs.get().ListDocuments, pb.ListDocumentsRequest()))

    async def ask(self, request: Request) -> Response:
        servicer = self.rpcs.get()
        body = await json_body(request)
        question = body.get("question")
        if not isinstance(question, str):
            raise InputError("'question' must be a string")
        message = pb.AskDocumentRequest(document_id=request.path_params["doc_id"], question=question,
                                        first_page=_count(body, "first_page"), last_page=_count(body, "last_page"),
                                        max_tokens=_count(body, "max_tokens"))
        info = await in_thread(lambda: self._info(message.document_id))
        given = [p.page for p in info.pages][(message.first_page or 1) - 1:message.last_page or None]

        def convert(event: pb.AskDocumentEvent) -> dict[str, Any]:
            nonlocal given
            out = to_json(event)
            kind = event.WhichOneof("event")
            if kind == "pages":
                given = list(event.pages.pages)
            elif kind == "done":
                out["citations"] = [{"page": n} for n in citations(event.done.text, info.page_count)]
                out["pages"] = given
            return out

        return await sse(Pump(servicer.AskDocument, message), convert)

    async def page(self, request: Request) -> Response:
        doc_id, number = request.path_params["doc_id"], request.path_params["number"]
        page, full_id = await in_thread(lambda: self._page(doc_id, number))
        image = f"/api/documents/{full_id}/pages/{number}.png" if page.rgb is not None else None
        return JSONResponse({"page": page.number, "kind": page.kind, "text": page.text, "image": image})

    async def page_image(self, request: Request) -> Response:
        doc_id, number = request.path_params["doc_id"], request.path_params["number"]

        def encode() -> bytes:
            page, _ = self._page(doc_id, number)
            if page.rgb is None:
                raise NotFound(f"page {number} is text, not a scan: GET /api/documents/{doc_id}/pages/{number}")
            out = io.BytesIO()
            Image.fromarray(page.rgb).save(out, "PNG")
            return out.getvalue()

        return Response(await in_thread(encode), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def delete(self, request: Request) -> Response:
        message = pb.DeleteRequest(ids=[request.path_params["doc_id"]])
        return JSONResponse(await unary(self.rpcs.get().DeleteDocuments, message))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _info(self, doc_id: str) -> pb.DocumentInfo:
        """The document's DocumentInfo, as ListDocuments gives it; NotFound."""
        servicer = self.rpcs.get()
        full_id = servicer.documents.resolve(doc_id.strip().lower())
        for info in servicer.ListDocuments(pb.ListDocumentsRequest(), CallContext()).documents:
            if info.document_id == full_id:
                return info
        raise NotFound(f"no document {doc_id!r}; drop the PDF on the page first")

    def _page(self, doc_id: str, number: int) -> tuple[StoredPage, str]:
        """One stored page (text and scan, as the daemon keeps it) and the document's full id."""
        store = self.rpcs.get().documents
        full_id = store.resolve(doc_id.strip().lower())
        doc = store.get(full_id, with_content=False) if full_id else None
        if doc is None:
            raise NotFound(f"no document {doc_id!r}; drop the PDF on the page first")
        page = store.page(doc.id, number)
        if page is None:
            raise NotFound(f"page {number} is not within the document's pages 1-{doc.page_count}")
        return page, doc.id


def _count(body: dict[str, Any], name: str) -> int:
    """An optional non-negative integer field of a JSON body (0 when absent)."""
    value = body.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"'{name}' must be a non-negative integer, got {value!r}")
    return value
