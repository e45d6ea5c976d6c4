"""The document RPCs: IngestDocument, AskDocument, ListDocuments, and DocumentRef parts for Generate.

Work is split by who must do it:
  * the gRPC handler thread has the PDF read (pypdf, no model: the decoder stays free for other clients) by a
    child process with a CPU, memory and time budget that is killed when the client leaves or the daemon
    stops (modalities/pdf_isolated.py), and writes the store;
  * decoder jobs (daemon/jobs.py) count tokens per page (only the backend knows them), warm the prompt cache
    with the document (ingest) and answer questions.

Cache layout: an AskDocument prompt is  [template head, system text, user opening, document header, page
groups..., question, turn close]  with a cache point after the system text and after every page group
(modalities/document_prompt.py). Ingest prefills the whole document's prefix when it fits, so the first
question is already warm and every later question, from any client, restores that snapshot and evaluates only
the question. A document that does not fit is answered from the pages that best match the question, in
document order, and the client is told which (a `pages` event): a question whose pages start like an earlier
one's resumes at the last page group they share. Ingest says what such a question costs (about how many
pages it reads, and how long a cold one takes at this machine's measured prefill rate), and every long
prefill streams its progress.

Nothing half-ingested: rows are written only after every page was read and counted (document_store.py); a
bad file, a cancelled ingest or a failed count leaves no row, no folder and no cache entry.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import grpc
import numpy as np
from PIL import Image

from omnid.daemon import jobs
from omnid.daemon.events import PrefillProgress, Progress
from omnid.daemon.errors import NotFound
from omnid.daemon.rpc_base import Deletion, RpcBase, abort, progress_message, sampling_from
from omnid.daemon.session import DecoderSession
from omnid.modalities.document_prompt import header, layout, pages_per_question
from omnid.modalities.document_store import DocumentStore, StoredDocument, StoredPage
from omnid.modalities.documents import TooManyPages
from omnid.modalities.pdf_isolated import IsolatedPdf, stop_all
from omnid.modalities.images import image_segment
from omnid.models.base import InputError, Segment, TextSegment
from omnid.proto import omnid_pb2 as pb

log = logging.getLogger(__name__)

#: Largest PDF taken (bytes): a scanned 500-page book fits; the gRPC message limit is the same.
MAX_PDF_BYTES = 256 * 1024 * 1024
#: Scans are kept at most this large on disk, and downscaled again to what the model's encoder takes.
STORE_MAX_SIDE = 1536
#: Tokens kept free for the system text, the template and a question when judging "fits the context".
PROMPT_RESERVE = 512
#: Documents kept decoded in memory (their pages and scans), most recently used first.
LOADED_DOCUMENTS = 2
#: Tokens prefilled at ingest to measure the prefill rate, when nothing has measured it yet.
RATE_SAMPLE_TOKENS = 1024


class TooLarge(InputError):
    """A PDF over MAX_PDF_BYTES: RESOURCE_EXHAUSTED."""


@dataclass
class _Loaded:
    """A document ready for prompts: the stored rows plus its pages with scans at the encoder's size."""

    doc: StoredDocument
    pages: list[StoredPage]
    #: The page sets its last questions used (for reusing one that the cache holds; see jobs.ask_document).
    recent: jobs.RecentPageSets = field(default_factory=jobs.RecentPageSets)


class DocumentRpcs(RpcBase):
    def setup(self) -> None:
        super().setup()
        self.documents = DocumentStore(self.config.data_dir / "documents")
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._loaded_lock = threading.Lock()

    def close(self) -> None:
        stop_all()  # a PDF being read stops now, not after its page
        self.documents.close()
        super().close()

    # -- IngestDocument --------------------------------------------------------------------------------------

    def IngestDocument(self, request: pb.IngestDocumentRequest,
                       context: grpc.ServicerContext) -> Iterator[pb.IngestEvent]:
        t0 = time.perf_counter()
        try:
            data, name = self._pdf_source(request)
            doc_id = hashlib.sha256(data).hexdigest()
            known = self.documents.get(doc_id, with_content=False)
            if known is None:
                pdf = IsolatedPdf(data, password=request.password, max_pages=self.config.max_document_pages,
                                  store_max_side=STORE_MAX_SIDE)
                context.add_callback(pdf.stop)  # a client that goes away stops the reading
                stored: list[StoredPage] = []
                scans: dict[int, np.ndarray] = {}  # pages showing one image share one array
                for page in pdf.pages():
                    rgb = None
                    if page.image is not None:
                        rgb = scans.get(id(page.image))
                        if rgb is None:
                            rgb = scans[id(page.image)] = image_segment(page.image, STORE_MAX_SIDE).rgb
                    stored.append(StoredPage(page.number, page.kind, page.text, 0, rgb))
                    yield _progress("reading", page.number, pdf.page_count, 0, t0)
                loaded = _Loaded(StoredDocument(doc_id, name, pdf.page_count, time.time(), 0.0, "", "", stored),
                                 self._model_pages(stored))
            else:
                loaded = self._load(doc_id)
        except Exception as exc:
            _abort(context, exc)
        if loaded.doc.fingerprint != self.info.fingerprint:
            yield from self._count(loaded, context, t0)
            if known is None:
                loaded.doc.ingest_ms = (time.perf_counter() - t0) * 1000
                self.call(context, lambda: self.documents.save(loaded.doc))
                self._remember(loaded)
            else:
                self.call(context, lambda: self.documents.update_tokens(
                    doc_id, loaded.doc.fingerprint, {p.number: p.tokens for p in loaded.doc.pages}))
        if self._fits(loaded):
            if not self._cached(loaded.doc):
                yield from self._warm(loaded, context, t0)
        elif not self.scheduler.prefill_rate.tokens_per_second:
            yield from self._measure(loaded, context, t0)
        yield pb.IngestEvent(done=self._info(loaded.doc, ingest_ms=(time.perf_counter() - t0) * 1000))

    def _pdf_source(self, request: pb.IngestDocumentRequest) -> tuple[bytes, str]:
        source = request.WhichOneof("source")
        if source == "data":
            data, name = request.data, request.name or "document.pdf"
        elif source == "path":
            with self.open_readable(request.path) as opened:  # read through this descriptor only
                if opened.size > MAX_PDF_BYTES:
                    raise TooLarge(f"{opened.name} is {opened.size} bytes; the limit is {MAX_PDF_BYTES}")
                data, name = opened.read(MAX_PDF_BYTES + 1), request.name or opened.name
        else:
            raise InputError("give the PDF's bytes (data) or a path the daemon may read")
        if len(data) > MAX_PDF_BYTES:
            raise TooLarge(f"the PDF is {len(data)} bytes; the limit is {MAX_PDF_BYTES}")
        return data, name

    def _count(self, loaded: _Loaded, context: grpc.ServicerContext, t0: float) -> Iterator[pb.IngestEvent]:
        """Count every page's tokens on the decoder (as the model will see the page) and stamp the model."""
        job = jobs.count_pages(loaded.pages, self._vision())
        yield from self.stream_job(job, context, "count-document", lambda p: _progress_message(p, t0))
        for stored, page in zip(loaded.doc.pages, loaded.pages):
            stored.tokens = page.tokens
        loaded.doc.fingerprint = self.info.fingerprint

    def _warm(self, loaded: _Loaded, context: grpc.ServicerContext, t0: float) -> Iterator[pb.IngestEvent]:
        """Prefill the document prefix into the shared prompt cache (so even the first question is warm)."""
        job = jobs.warm_document(loaded.pages, self._vision(), _head(loaded.doc))
        convert = _warming_message(t0)
        key = yield from self.stream_job(job, context, "warm-document", convert)
        loaded.doc.prefix_key = key
        self.call(context, lambda: self.documents.set_prefix_key(loaded.doc.id, key))

    def _measure(self, loaded: _Loaded, context: grpc.ServicerContext, t0: float) -> Iterator[pb.IngestEvent]:
        """Measure the prefill rate on the document's first pages (see jobs.measure_prefill)."""
        job = jobs.measure_prefill(loaded.pages, self._vision(), _head(loaded.doc), RATE_SAMPLE_TOKENS)
        yield from self.stream_job(job, context, "measure-document", _warming_message(t0))

    # -- AskDocument -----------------------------------------------------------------------------------------

    def AskDocument(self, request: pb.AskDocumentRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.AskDocumentEvent]:
        def prepare() -> tuple[_Loaded, int, int]:
            if not request.question.strip():
                raise InputError("the question is empty")
            loaded = self._load(request.document_id)
            first, last = page_range(request.first_page, request.last_page, loaded.doc.page_count)
            return loaded, first, last

        loaded, first, last = self.call(context, prepare)
        max_tokens, sampling = self.call(context, lambda: self.answer_limits(request.max_tokens,
                                                                             sampling_from(request.sampling)))
        if loaded.doc.fingerprint != self.info.fingerprint:  # ingested under another model: recount once
            for _ in self._count(loaded, context, time.perf_counter()):
                pass  # progress of a recount is not part of an answer
            self.call(context, lambda: self.documents.update_tokens(
                loaded.doc.id, loaded.doc.fingerprint, {p.number: p.tokens for p in loaded.doc.pages}))
        job = jobs.ask_document(loaded.pages[first - 1:last], request.question, head=_head(loaded.doc),
                                first=first, last=last,
                                whole=(first, last) == (1, loaded.doc.page_count), vision=self._vision(),
                                max_tokens=max_tokens, sampling=sampling, recent=loaded.recent)
        yield from self.answer_stream(job, context, "ask-document", pb.AskDocumentEvent)

    # -- DeleteDocuments -------------------------------------------------------------------------------------

    def DeleteDocuments(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteReply:
        """Rows, page images, the decoded copy in memory and every prompt-cache entry made from the document."""
        def select() -> list[str]:
            what = Deletion.of(request)
            if what.everything:
                return [d.id for d in self.documents.list()]
            if what.ids:
                return list(dict.fromkeys(self._resolve(i) for i in what.ids))  # all known, or nothing goes
            return list(self.documents.ids_between(what.since, what.until))

        reply = pb.DeleteReply()
        for doc_id in self.call(context, select):
            loaded = self.call(context, lambda: self._load(doc_id))
            reply.cache_entries_removed += self._forget_cached(loaded, context)
            doc, freed = self.call(context, lambda: self.documents.delete(doc_id))
            with self._loaded_lock:
                self._loaded.pop(doc_id, None)
            if doc is not None:
                reply.deleted_ids.append(doc_id)
                reply.bytes_removed += freed
        reply.deleted = len(reply.deleted_ids)
        log.info("deleted %d documents", reply.deleted)
        return reply

    def _forget_cached(self, loaded: _Loaded, context: grpc.ServicerContext) -> int:
        """Drop every cache entry made from the document's content (the warm prefix, checkpoints inside it,
        snapshots of questions after it) and empty the live sequence. A decoder job: the pages are tokenized
        as the prompts had them."""
        forget = jobs.forget_document(_head(loaded.doc))

        def job(session: DecoderSession, emit: jobs.Emit) -> int:
            removed = forget(session, emit)
            self.scheduler.empty_sequence()  # the live sequence may hold the document too
            return removed

        return self.unary_job(job, context, "forget-document")

    def _resolve(self, id_or_prefix: str) -> str:
        full_id = self.documents.resolve(id_or_prefix)
        if full_id is None:
            raise NotFound(f"no document {id_or_prefix!r} (see `omni doc list`)")
        return full_id

    # -- ListDocuments and DocumentRef parts -----------------------------------------------------------------

    def ListDocuments(self, request: pb.ListDocumentsRequest,
                      context: grpc.ServicerContext) -> pb.ListDocumentsReply:
        docs = self.call(context, self.documents.list)
        return pb.ListDocumentsReply(documents=[self._info(d, ingest_ms=d.ingest_ms) for d in docs])

    def resolve_document_part(self, ref: pb.DocumentRef) -> list[Segment]:
        """A DocumentRef in a Generate prompt: the (range of) pages as segments, laid out as AskDocument does.

        No page choice here (Generate has no question to rank by): a range that does not fit the context
        ends the call with OUT_OF_RANGE, and the message names the tokens needed.
        """
        loaded = self._load(ref.document_id)
        first, last = page_range(ref.first_page, ref.last_page, loaded.doc.page_count)
        return [TextSegment(f"[Document: {loaded.doc.name}]\n"), *layout(loaded.pages[first - 1:last], self._vision())]

    # -- helpers ---------------------------------------------------------------------------------------------

    def _vision(self) -> bool:
        return "image" in self.info.capabilities

    def _model_pages(self, pages: list[StoredPage]) -> list[StoredPage]:
        """The pages as the model sees them: scans downscaled (deterministically) to the encoder's size, once
        for pages that share one scan."""
        scaled: dict[int, np.ndarray] = {}
        model = []
        for page in pages:
            if page.rgb is not None and id(page.rgb) not in scaled:
                scaled[id(page.rgb)] = image_segment(Image.fromarray(page.rgb), self.info.max_image_side).rgb
            model.append(replace(page, rgb=None if page.rgb is None else scaled[id(page.rgb)]))
        return model

    def _load(self, doc_id: str) -> _Loaded:
        """A document by id (or a unique prefix of 4+ characters), from memory or the store; NotFound."""
        doc_id = doc_id.strip().lower()
        with self._loaded_lock:
            if doc_id in self._loaded:
                self._loaded.move_to_end(doc_id)
                return self._loaded[doc_id]
        full_id = self.documents.resolve(doc_id)
        doc = self.documents.get(full_id) if full_id else None
        if doc is None:
            raise NotFound(f"no document {doc_id!r}; ingest it first (omni doc ingest FILE.pdf)")
        with self._loaded_lock:
            if doc.id in self._loaded:
                return self._loaded[doc.id]
        loaded = _Loaded(doc, self._model_pages(doc.pages))
        self._remember(loaded)
        return loaded

    def _remember(self, loaded: _Loaded) -> None:
        with self._loaded_lock:
            self._loaded[loaded.doc.id] = loaded
            self._loaded.move_to_end(loaded.doc.id)
            while len(self._loaded) > LOADED_DOCUMENTS:
                self._loaded.popitem(last=False)

    def _fits(self, loaded: _Loaded) -> bool:
        return _fits(sum(p.tokens for p in loaded.pages), self.info.context_length, self.config.default_max_tokens)

    def _cached(self, doc: StoredDocument) -> bool:
        cache = self.scheduler.cache
        return bool(doc.prefix_key) and cache is not None and cache.contains(doc.prefix_key)

    def _info(self, doc: StoredDocument, *, ingest_ms: float) -> pb.DocumentInfo:
        vision = self._vision()
        pages = [pb.PageInfo(page=p.number, tokens=p.tokens,
                             kind=p.kind if p.kind == "text" or vision else "unread") for p in doc.pages]
        total = sum(p.tokens for p in doc.pages)
        context = self.info.context_length
        budget = max(0, context - PROMPT_RESERVE - self.config.default_max_tokens)
        question_pages, question_tokens = pages_per_question([p.tokens for p in doc.pages], budget)
        return pb.DocumentInfo(
            document_id=doc.id, name=doc.name, page_count=doc.page_count, total_tokens=total, pages=pages,
            unread_pages=[p.page for p in pages if p.kind == "unread"],
            fits_context=_fits(total, context, self.config.default_max_tokens),
            ingest_ms=ingest_ms, cached=self._cached(doc), question_pages=question_pages,
            question_tokens=question_tokens, context_length=context,
            cold_question_seconds=self.scheduler.prefill_rate.seconds_for(question_tokens + PROMPT_RESERVE))


def page_range(first: int, last: int, page_count: int) -> tuple[int, int]:
    """A request's 1-based inclusive range (0 = open end) checked against the document."""
    first, last = first or 1, last or page_count
    if not 1 <= first <= last <= page_count:
        raise InputError(f"pages {first}-{last} are not within the document's pages 1-{page_count}")
    return first, last


def _fits(tokens: int, context_length: int, answer_tokens: int) -> bool:
    return tokens + PROMPT_RESERVE + answer_tokens <= context_length


def _head(doc: StoredDocument) -> TextSegment:
    return header(doc.name, doc.id)


def _warming_message(t0: float) -> Callable[[Progress | PrefillProgress], pb.IngestEvent]:
    """Ingest progress of a job that prefills (measuring, warming): its stage, then the prefill's tokens."""
    last = Progress("prefilling", 0, 0)

    def convert(p: Progress | PrefillProgress) -> pb.IngestEvent:
        nonlocal last
        if isinstance(p, Progress):
            last = p
            return _progress_message(p, t0)
        return pb.IngestEvent(progress=pb.IngestProgress(
            pages_done=last.done, pages_total=last.total, tokens=p.done, stage=last.stage,
            elapsed_ms=(time.perf_counter() - t0) * 1000, prefill=progress_message(p)))
    return convert


def _progress(stage: str, done: int, total: int, tokens: int, t0: float) -> pb.IngestEvent:
    return _progress_message(Progress(stage, done, total, tokens), t0)


def _progress_message(p: Progress, t0: float) -> pb.IngestEvent:
    return pb.IngestEvent(progress=pb.IngestProgress(pages_done=p.done, pages_total=p.total, tokens=p.tokens,
                                                     elapsed_ms=(time.perf_counter() - t0) * 1000, stage=p.stage))


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, (TooManyPages, TooLarge)):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    abort(context, exc)
