"""Documents end to end: real reportlab PDFs through a real `omnid serve` on the tiny random-weight model.

Random weights give meaningless text, so these tests assert on structure: page kinds, token counts, which
pages were used, what the prompt cache reused, error statuses, what is left on disk. The shared daemon runs
with a 4096-token context: a short 10-page report fits (and is warmed at ingest); the 100-page report (text,
tables and scans, ~2,000 tokens a page with this byte-level vocabulary) does not, so questions about it go
through page choice.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from documents_pdfs import encrypt, make_blank, make_report, page_kind
from omnid.clients.documents import document_id
from omnid.proto import omnid_pb2 as pb


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pdfs")
    files = {"report100": make_report(100), "short": make_report(10, lines=2), "small": make_report(3, lines=1)}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pdf"
        paths[name].write_bytes(data)
    return paths


def _ingest(client, source, **kwargs) -> tuple[pb.DocumentInfo, list[pb.IngestProgress]]:
    progress: list[pb.IngestProgress] = []
    info = client.ingest_document(source, progress=progress.append, **kwargs)
    return info, progress


def _ask(client, doc_id: str, question: str, **kwargs) -> tuple[list[pb.AskDocumentEvent], pb.Final]:
    events = list(client.ask_document(doc_id, question, max_tokens=kwargs.pop("max_tokens", 4), **kwargs))
    assert events[-1].WhichOneof("event") == "done"
    return events, events[-1].done


def test_ingest_100_pages_reports_every_page_and_progress(client, pdfs) -> None:
    info, progress = _ingest(client, pdfs["report100"], send_path=True)
    assert info.document_id == document_id(pdfs["report100"])
    assert info.name == "report100.pdf" and info.page_count == 100
    assert [p.page for p in info.pages] == list(range(1, 101))
    for page in info.pages:
        assert page.kind == ("image" if page_kind(page.page) == "image" else "text")
        assert page.tokens > 0
    assert info.total_tokens == sum(p.tokens for p in info.pages)
    assert not info.unread_pages
    assert not info.fits_context and not info.cached  # 100 pages do not fit 4096 tokens: nothing to warm
    reading = [p for p in progress if p.stage == "reading"]
    assert [p.pages_done for p in reading] == list(range(1, 101))
    counting = [p for p in progress if p.stage == "counting"]
    assert counting[-1].pages_done == 100 and counting[-1].tokens == info.total_tokens
    assert all(b.elapsed_ms >= a.elapsed_ms for a, b in zip(progress, progress[1:]))


def test_a_document_too_large_is_answered_from_the_matching_pages(daemon, pdfs) -> None:
    doc_id = document_id(pdfs["report100"])
    with daemon.client() as first:
        _ingest(first, pdfs["report100"])
        events, cold = _ask(first, doc_id, "What is the code of page 37?")
    notes = [e.pages for e in events if e.WhichOneof("event") == "pages"]
    assert len(notes) == 1 and events[0].WhichOneof("event") == "pages"
    assert 37 in notes[0].pages and len(notes[0].pages) < 100 and "BM25" in notes[0].reason
    assert cold.usage.prompt_tokens <= 4096
    with daemon.client() as second:  # another client, the same question: the document prefix is reused
        _, warm = _ask(second, doc_id, "What is the code of page 37?")
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens
    assert warm.usage.prompt_tokens - warm.usage.cached_tokens < 80  # only the question and the turn close


def test_a_fitting_document_is_warm_for_its_first_question(daemon, pdfs) -> None:
    with daemon.client() as first:
        info, progress = _ingest(first, pdfs["short"])
    assert info.fits_context and info.cached
    assert "prefilling" in {p.stage for p in progress}
    assert [p.kind for p in info.pages][9] == "image"
    with daemon.client() as second:
        events, final = _ask(second, info.document_id, "Which items are in the inventory table?")
        _, again = _ask(second, info.document_id, "What is on page 2?")
    assert not [e for e in events if e.WhichOneof("event") == "pages"]  # the whole document was used
    u = final.usage
    # Only the question and the turn's close were evaluated.
    assert u.prompt_tokens > info.total_tokens and u.prompt_tokens - u.cached_tokens < 80
    # the whole document again, and token by token as much of the question as the two share ("Question: W...")
    assert u.cached_tokens <= again.usage.cached_tokens < again.usage.prompt_tokens
    with daemon.client() as third:  # ingesting the same bytes again is free: same id, already warm
        repeat, progress = _ingest(third, pdfs["short"].read_bytes())
    assert repeat.document_id == info.document_id and repeat.cached and not progress


def test_page_range_and_generate_with_a_document_part(client, pdfs) -> None:
    info, _ = _ingest(client, pdfs["short"])
    events, final = _ask(client, info.document_id[:12], "What is on these pages?", first_page=2, last_page=4)
    assert events[0].pages.pages == [2, 3, 4] and final.usage.prompt_tokens > 0
    answer = client.ask(pb.Part(document=pb.DocumentRef(document_id=info.document_id, first_page=1, last_page=3)),
                        pb.Part(text="Summarise."), max_tokens=3)
    assert answer.usage.prompt_tokens > 3 * 100 and answer.usage.generated_tokens <= 3


def _state(daemon) -> tuple[list[str], int, list[str]]:
    with daemon.client() as c:
        docs = sorted(d.document_id for d in c.list_documents())
        entries = c.status().cache.entries
    folders = sorted(p.name for p in (daemon.tmp / "data" / "documents").iterdir() if p.is_dir())
    return docs, entries, folders


@pytest.mark.parametrize("case", ["not a pdf", "truncated", "encrypted", "wrong password", "no pages",
                                  "too many pages", "not allowed"])
def test_bad_input_is_a_clear_status_and_leaves_nothing(daemon, pdfs, case) -> None:
    report = pdfs["small"].read_bytes()
    locked = encrypt(report, "s3cret")
    outside = Path("/etc/hostname") if Path("/etc/hostname").exists() else Path("/etc/passwd")
    request, code, words = {
        "not a pdf": (dict(source=b"%!PS-Adobe-3.0 not a pdf"), grpc.StatusCode.INVALID_ARGUMENT, "not a PDF"),
        "truncated": (dict(source=report[:len(report) // 2]), grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        "encrypted": (dict(source=locked), grpc.StatusCode.INVALID_ARGUMENT, "give its password"),
        "wrong password": (dict(source=locked, password="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                           "password does not open"),
        "no pages": (dict(source=make_blank(0)), grpc.StatusCode.INVALID_ARGUMENT, "no pages"),
        "too many pages": (dict(source=make_blank(501)), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 500"),
        "not allowed": (dict(source=outside, send_path=True), grpc.StatusCode.PERMISSION_DENIED, "may not read"),
    }[case]
    before = _state(daemon)
    with daemon.client() as c:
        with pytest.raises(grpc.RpcError) as caught:
            c.ingest_document(request.pop("source"), **request)
        assert caught.value.code() == code and words in caught.value.details()
        assert c.status().model_name  # the daemon is unharmed
    assert _state(daemon) == before


def test_encrypted_pdf_opens_with_its_password(client, pdfs) -> None:
    info, _ = _ingest(client, encrypt(pdfs["small"].read_bytes(), "s3cret"), password="s3cret", name="locked.pdf")
    assert info.page_count == 3 and info.name == "locked.pdf"


def test_questions_with_bad_references(client, pdfs) -> None:
    info, _ = _ingest(client, pdfs["small"])
    for doc_id, question, pages, code in [
        ("0" * 64, "Anything?", (0, 0), grpc.StatusCode.NOT_FOUND),
        (info.document_id, "  ", (0, 0), grpc.StatusCode.INVALID_ARGUMENT),
        (info.document_id, "Anything?", (3, 9), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            _ask(client, doc_id, question, first_page=pages[0], last_page=pages[1])
        assert caught.value.code() == code, caught.value.details()


def test_scans_are_reported_unread_without_a_vision_encoder(start_daemon, client, pdfs) -> None:
    blind = start_daemon(mmproj="")
    with blind.client() as c:
        info, _ = _ingest(c, pdfs["short"])
        events, final = _ask(c, info.document_id, "What does the scan on page 10 show?")
    assert list(info.unread_pages) == [10] and info.pages[9].kind == "unread"
    # The question was answered from the whole document (every page's counted tokens are in the prompt)...
    assert not [e for e in events if e.WhichOneof("event") == "pages"]
    assert final.usage.prompt_tokens > info.total_tokens
    # ...in which the scan is only its marker: a model that sees it spends its image tokens on it.
    seeing, _ = _ingest(client, pdfs["short"])
    assert seeing.pages[9].kind == "image" and seeing.pages[9].tokens > info.pages[9].tokens + 10
    assert [p.tokens for i, p in enumerate(seeing.pages) if i != 9] == \
        [p.tokens for i, p in enumerate(info.pages) if i != 9]


def test_documents_and_their_warm_prefix_survive_a_restart(start_daemon, tmp_path_factory, pdfs) -> None:
    keep = tmp_path_factory.mktemp("keep")
    flags = ("--data-dir", str(keep / "data"), "--cache-disk", str(keep / "cache"))
    first = start_daemon(*flags)
    with first.client() as c:
        info, _ = _ingest(c, pdfs["short"])
    first.stop()
    second = start_daemon(*flags)
    with second.client() as c:
        [listed] = c.list_documents()
        assert listed.document_id == info.document_id and listed.total_tokens == info.total_tokens
        assert listed.cached  # the warm prefix is in the disk tier
        _, final = _ask(c, info.document_id, "What is on page 3?")
        assert final.usage.prompt_tokens - final.usage.cached_tokens < 80  # only the question and the turn close


def test_cli_ingest_ask_list(daemon, tmp_path) -> None:
    pdf = tmp_path / "cli.pdf"
    pdf.write_bytes(make_report(4, lines=1))
    omni = [sys.executable, "-m", "omnid.clients.cli", "--socket", str(daemon.socket), "doc"]
    run = lambda *args: subprocess.run([*omni, *args], capture_output=True, text=True, timeout=60)  # noqa: E731
    asked = run("ask", str(pdf), "What is on page 1?", "--max-tokens", "2", "--json")  # ingests first
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["document_id"] == document_id(pdf) and answer["usage"]["prompt_tokens"] > 0
    ingested = run("ingest", str(pdf))
    assert ingested.returncode == 0 and "4 pages" in ingested.stdout and document_id(pdf)[:16] in ingested.stdout
    listed = run("list", "--json")
    assert document_id(pdf) in {d["document_id"] for d in json.loads(listed.stdout)}
    fresh = tmp_path / "fresh.pdf"
    fresh.write_bytes(make_report(5, lines=1))
    progress = run("ingest", str(fresh))
    assert progress.returncode == 0 and "reading" in progress.stderr and "5/5 pages" in progress.stderr
    assert "\r" not in progress.stderr  # not a terminal: plain lines, no redraws
    bad = run("ingest", str(pdf.with_suffix(".txt")))
    assert bad.returncode != 0 and bad.stderr.startswith("omni:")
