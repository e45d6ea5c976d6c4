"""The client side of documents: ingest a PDF, ask about it, list what the daemon holds.

    with OmniClient() as omni:
        info = omni.ingest_document("report.pdf", progress=lambda p: print(p.pages_done, p.pages_total))
        for event in omni.ask_document(info.document_id, "What does the table on page 5 say?"):
            ...
A document id is the SHA-256 of the PDF's bytes, so a client can tell whether the daemon already holds a file
without sending it (`document_id`), and any client reuses what another ingested.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from omnid.proto import omnid_pb2 as pb


def document_id(source: str | Path | bytes) -> str:
    """The id the daemon gives this PDF (the SHA-256 of its bytes)."""
    data = source if isinstance(source, bytes) else Path(source).expanduser().read_bytes()
    return hashlib.sha256(data).hexdigest()


class DocumentsClient:
    """Mixed into OmniClient (needs self.stub and self.metadata)."""

    stub: object
    metadata: tuple[tuple[str, str], ...]

    def ingest_document(self, source: str | Path | bytes, *, password: str = "", name: str = "",
                        send_path: bool = False,
                        progress: Callable[[pb.IngestProgress], None] | None = None) -> pb.DocumentInfo:
        """Ingest a PDF (bytes, or a file sent as bytes; with send_path the daemon reads the path itself,
        which it must be allowed to: `omnid serve --allow-read DIR`). Returns the document's info."""
        if isinstance(source, bytes):
            request = pb.IngestDocumentRequest(data=source, password=password, name=name)
        elif send_path:
            request = pb.IngestDocumentRequest(path=str(Path(source).expanduser().resolve()), password=password,
                                               name=name)
        else:
            path = Path(source).expanduser()
            request = pb.IngestDocumentRequest(data=path.read_bytes(), password=password, name=name or path.name)
        for event in self.stub.IngestDocument(request, metadata=self.metadata):  # type: ignore[attr-defined]
            if event.WhichOneof("event") == "progress":
                if progress is not None:
                    progress(event.progress)
            else:
                return event.done
        raise RuntimeError("the ingest stream ended without a result")

    def ask_document(self, document_id: str, question: str, *, first_page: int = 0, last_page: int = 0,
                     max_tokens: int = 0, sampling: pb.Sampling | None = None) -> Iterator[pb.AskDocumentEvent]:
        """The answer's events: maybe a `pages` note (which pages were used), deltas, then one `done`."""
        request = pb.AskDocumentRequest(document_id=document_id, question=question, first_page=first_page,
                                        last_page=last_page, max_tokens=max_tokens,
                                        sampling=sampling or pb.Sampling())
        return self.stub.AskDocument(request, metadata=self.metadata)  # type: ignore[attr-defined]

    def delete_documents(self, ids: Iterable[str] = (), *, since: float = 0.0, until: float = 0.0,
                         everything: bool = False) -> pb.DeleteReply:
        """Delete documents by id (or unique prefix), ingested within [since, until), or all (exactly one of
        these): their pages, page images and prompt-cache entries."""
        request = pb.DeleteRequest(ids=list(ids), since_unix=since, until_unix=until, all=everything)
        return self.stub.DeleteDocuments(request, metadata=self.metadata)  # type: ignore[attr-defined]

    def list_documents(self) -> list[pb.DocumentInfo]:
        reply = self.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=self.metadata)  # type: ignore[attr-defined]
        return list(reply.documents)
