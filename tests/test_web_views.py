"""The page's documents, meetings and screen-history views and their /api/, as a person uses them.

A real `omnid serve --http` on the tiny random-weight omni model, on an Xvfb screen and a PulseAudio virtual
microphone where those are installed (the parts that need one skip with the reason where not). First the
/api/ over plain HTTP (statuses, shapes, SSE as it streams), then the views in real headless Chromium.

Random weights: assertions are on structure, counts and statuses, never on wording.
"""
from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from audio_fixtures import speech_wav
from documents_pdfs import encrypt, make_report, page_kind
from pulse_mic import PulseMic, PulseUnavailable
from screen_x11 import TkWindow, Xvfb, environment, xvfb_missing
from web_api import WebApi, multipart
from web_browser import Browser, chromium

from omnid.daemon.web.api_documents import citations
from omnid.daemon.web.rpc_call import Pump
from omnid.proto import omnid_pb2 as pb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Desk:
    """What the tests share: the daemon's /api/, its X screen and microphone (None where not installed)."""

    def __init__(self, daemon: Any, api: WebApi, xvfb: Xvfb | None, mic: PulseMic | None, why: dict[str, str]):
        self.daemon, self.api, self.xvfb, self.mic, self.why = daemon, api, xvfb, mic, why

    def need_screen(self) -> Xvfb:
        if self.xvfb is None:
            pytest.skip(self.why["screen"])
        return self.xvfb

    def need_mic(self) -> PulseMic:
        if self.mic is None:
            pytest.skip(self.why["mic"])
        return self.mic


@pytest.fixture(scope="module")
def desk(start_daemon, tmp_path_factory) -> Iterator[Desk]:
    why: dict[str, str] = {}
    xvfb = mic = None
    if xvfb_missing() is None:
        xvfb = Xvfb(800, 600)
    else:
        why["screen"] = xvfb_missing() or ""
    try:
        mic = PulseMic()
    except PulseUnavailable as exc:
        why["mic"] = str(exc)
    port = _free_port()
    token_file = tmp_path_factory.mktemp("token") / "token"
    display = {"DISPLAY": xvfb.display, "WAYLAND_DISPLAY": None} if xvfb else {}
    sound = {"PULSE_SERVER": mic.env["PULSE_SERVER"], "PULSE_RUNTIME_PATH": mic.env["PULSE_RUNTIME_PATH"]} \
        if mic else {}
    with environment(**display, **sound):  # the daemon inherits the screen and the microphone
        daemon = start_daemon("--http", f"127.0.0.1:{port}", "--token-file", str(token_file))
    yield Desk(daemon, WebApi(port, token_file.read_text().strip()), xvfb, mic, why)
    if mic is not None:
        mic.close()
    if xvfb is not None:
        xvfb.close()


@pytest.fixture(scope="module")
def browser(desk: Desk, tmp_path_factory) -> Iterator[Browser]:
    """Headless Chromium logged in to the page as a person is (a one-time link); screenshots in a tmp folder."""
    with chromium(tmp_path_factory.mktemp("shots")) as b:
        with desk.daemon.client() as client:
            b.login(client)
        yield b


def ingest(api: WebApi, pdf: bytes, name: str = "report.pdf") -> list[dict[str, Any]]:
    body, content_type = multipart({}, {"file": (name, pdf, "application/pdf")})
    return list(api.events("POST", "/api/documents", raw=body, content_type=content_type))


# -- documents ---------------------------------------------------------------------------------------------


def test_citations_are_the_pages_an_answer_names_within_the_document() -> None:
    text = "The code is 42 (p. 3). Tables follow (pp. 5-6), also (p. 2, 9) and (p. 99) (pp. 1-100000)."
    assert citations(text, 10) == [3, 5, 6, 2, 9, 1, 4, 7, 8, 10]
    assert citations("nothing cited, p. 4 without brackets", 10) == []


def test_a_pdf_is_ingested_listed_asked_and_its_pages_opened(desk: Desk) -> None:
    api = desk.api
    events = ingest(api, make_report(10, lines=2))
    assert [e for e in events if "progress" in e], "ingest streams its progress"
    done = events[-1]["done"]
    doc_id = done["document_id"]
    assert done["page_count"] == 10 and [p["page"] for p in done["pages"]] == list(range(1, 11))
    assert all(p["kind"] == ("image" if page_kind(p["page"]) == "image" else "text") for p in done["pages"])
    listed = api.json("GET", "/api/documents")["documents"]
    assert doc_id in [d["document_id"] for d in listed]

    text_page = api.json("GET", f"/api/documents/{doc_id}/pages/3")
    assert text_page["kind"] == "text" and "page 3" in text_page["text"] and text_page["image"] is None
    scan = api.json("GET", f"/api/documents/{doc_id[:8]}/pages/10")
    assert scan["kind"] == "image" and scan["image"] == f"/api/documents/{doc_id}/pages/10.png"
    status, media, png = api.request("GET", scan["image"])
    assert status == 200 and media == "image/png"
    assert Image.open(io.BytesIO(png)).size[0] > 100

    answer = list(api.events("POST", f"/api/documents/{doc_id}/ask", {"question": "What is the code?",
                                                                      "max_tokens": 6}))
    deltas = [e["delta"] for e in answer if "delta" in e]
    final = answer[-1]
    assert "done" in final and final["done"]["usage"]["generated_tokens"] >= 1
    assert "".join(deltas) == final["done"]["text"]
    assert final["pages"] == list(range(1, 11))  # it fits: the answer was given from every page
    assert final["citations"] == [{"page": n} for n in citations(final["done"]["text"], 10)]


def test_a_document_larger_than_the_context_answers_from_the_pages_it_was_given(desk: Desk) -> None:
    api = desk.api
    done = ingest(api, make_report(30), "long.pdf")[-1]["done"]
    assert not done["fits_context"] and 0 < done["question_pages"] < 30
    answer = list(api.events("POST", f"/api/documents/{done['document_id']}/ask",
                             {"question": "What is the falcon code of page 12?", "max_tokens": 4}))
    chosen = [e["pages"]["pages"] for e in answer if "pages" in e and "done" not in e]
    assert len(chosen) == 1 and 12 in chosen[0]
    assert answer[-1]["pages"] == chosen[0]  # the sources the page shows are the pages the model read


def test_documents_refuse_bad_input_with_clear_errors(desk: Desk) -> None:
    api = desk.api
    body, content_type = multipart({}, {"file": ("notes.pdf", b"not a pdf at all", "application/pdf")})
    status, message = api.error("POST", "/api/documents", raw=body, content_type=content_type)
    assert status == 400, message
    body, content_type = multipart({"name": "x"}, {})
    assert api.error("POST", "/api/documents", raw=body, content_type=content_type)[0] == 400
    assert api.error("POST", "/api/documents/0123456789abcdef/ask", {"question": "hi"})[0] == 404
    doc_id = ingest(api, make_report(3, lines=1), "small.pdf")[-1]["done"]["document_id"]
    status, message = api.error("POST", f"/api/documents/{doc_id}/ask", {"question": "  "})
    assert status == 400 and "empty" in message
    assert api.error("POST", f"/api/documents/{doc_id}/ask", {"question": 3})[0] == 400
    assert api.error("POST", f"/api/documents/{doc_id}/ask", {"question": "q", "first_page": 9})[0] == 400
    assert api.error("POST", f"/api/documents/{doc_id}/ask", raw=b"{nope")[0] == 400
    assert api.error("GET", f"/api/documents/{doc_id}/pages/4")[0] == 404
    assert api.error("GET", f"/api/documents/{doc_id}/pages/1.png")[0] == 404  # a text page has no scan
    status, _, _ = api.request("GET", "/api/documents", token=None)
    assert status == 401
    deleted = api.json("DELETE", f"/api/documents/{doc_id}")
    assert deleted["deleted_ids"] == [doc_id]


def test_a_call_whose_page_leaves_is_cancelled_and_closed() -> None:
    """rpc_call.Pump as a handler sees it: a page that stops reading runs the handler's cancel callbacks (they
    free the decoder) and closes its generator on the handler's own thread."""
    seen: list[str] = []
    cancelled = threading.Event()

    def handler(request: Any, context: Any) -> Iterator[pb.AskDocumentEvent]:
        context.add_callback(lambda: (seen.append("cancelled"), cancelled.set()))
        try:
            while not cancelled.wait(0.01):
                yield pb.AskDocumentEvent(delta="word ")
        finally:
            seen.append("closed on " + threading.current_thread().name)

    async def read_one() -> str:
        messages = Pump(handler, pb.AskDocumentRequest()).messages()
        first = await messages.__anext__()
        await messages.aclose()
        return first.delta

    assert asyncio.run(read_one()) == "word "
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["cancelled", "closed on omnid-web-call"]


# -- meetings ----------------------------------------------------------------------------------------------


def test_a_meeting_from_the_microphone_has_a_growing_live_transcript(desk: Desk, tmp_path: Path) -> None:
    mic = desk.need_mic()
    api = desk.api
    devices = [d["name"] for d in api.json("GET", "/api/meetings/devices")["devices"]]
    assert "pulse" in devices or "default" in devices
    player = mic.play(speech_wav(tmp_path, 40))
    try:
        started = api.json("POST", "/api/meetings", {"device": "pulse", "title": "Standup from the page"})
        meeting_id = started["meeting_id"]
        assert started["state"] == "recording" and meeting_id
        status, message = api.error("POST", "/api/meetings", {})
        assert status == 400 and "already being recorded" in message
        segments: list[dict[str, Any]] = []
        states: list[str] = []
        final = None
        stopped_at = None
        for event in api.events("GET", f"/api/meetings/{meeting_id}/live"):
            if "segment" in event:
                segments.append(event["segment"])
                if len(segments) == 1:
                    assert api.json("POST", f"/api/meetings/{meeting_id[:8]}/pause")["state"] == "paused"
                    assert api.json("POST", f"/api/meetings/{meeting_id}/resume")["state"] == "recording"
                if len(segments) == 2 and stopped_at is None:  # grown: two 15 s clips seen live, then stop
                    stopped_at = api.json("POST", f"/api/meetings/{meeting_id}/stop")["state"]
            elif "state" in event:
                states.append(event["state"]["state"])
            elif "done" in event:
                final = event["done"]
    finally:
        player.kill()
    assert stopped_at == "stopped" and final is not None
    assert states[0] == "recording" and states[-1] == "stopped"
    assert len(states) > 10  # the recording's clock, second by second
    assert len(segments) >= 2 and segments[0]["start_seconds"] == 0.0
    assert segments[1]["start_seconds"] == pytest.approx(segments[0]["end_seconds"])
    assert final["meeting_id"] == meeting_id and len(final["segments"]) == len(segments)
    assert "summary" in final
    found = api.json("GET", "/api/meetings?q=Standup")["meetings"]
    assert [m["meeting_id"] for m in found] == [meeting_id]
    assert meeting_id in [m["meeting_id"] for m in api.json("GET", "/api/meetings")["meetings"]]
    stored = api.json("GET", f"/api/meetings/{meeting_id[:8]}")
    assert stored["segments"] == final["segments"] and stored["summary"] == final["summary"]
    assert api.json("GET", "/api/meetings/current")["state"] == "none"


def test_meetings_refuse_bad_input_with_clear_errors(desk: Desk) -> None:
    api = desk.api
    assert api.error("GET", "/api/meetings/0123456789abcdef")[0] == 404
    assert api.error("GET", "/api/meetings/0123456789abcdef/live")[0] == 404
    assert api.error("POST", "/api/meetings/0123456789abcdef/explode")[0] == 400
    assert api.error("POST", "/api/meetings", {"summary": "yes"})[0] == 400
    assert api.error("POST", "/api/meetings", {"max_seconds": -1})[0] == 400
    assert api.error("GET", "/api/meetings?limit=many")[0] == 400
    if desk.mic is None:  # no sound server: starting says why, as a 4xx, and records nothing
        assert api.error("POST", "/api/meetings", {"device": "no-such-microphone"})[0] < 500


# -- the screen history ------------------------------------------------------------------------------------


def test_screen_history_search_finds_the_frame_and_what_the_model_saw(desk: Desk) -> None:
    xvfb = desk.need_screen()
    api = desk.api
    window = TkWindow(xvfb.display, "Quarterly Notes", "500x400+100+100", "#2040c0")
    try:
        window.focus()
        state = api.json("POST", "/api/screen/watch", {"action": "start", "interval_seconds": 0.2, "monitor": 1})
        assert state["watching"] and not state["paused"]
        deadline = time.monotonic() + 60
        while not (found := api.json("GET", "/api/screen/search?q=Quarterly")["observations"]):
            assert time.monotonic() < deadline, "the watcher never stored an observation"
            time.sleep(0.2)
        hit = found[0]
        assert hit["window"] == "Quarterly Notes" and hit["text"] is not None
        status, media, jpeg = api.request("GET", hit["frame"])
        assert status == 200 and media == "image/jpeg"
        frame = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        assert frame.std() > 5  # the screen with the window on it, not one colour
        answer = list(api.events("POST", "/api/screen/ask", {"question": "What was I doing?", "max_tokens": 4}))
        assert "done" in answer[-1] and answer[-1]["done"]["usage"]["prompt_tokens"] > 20
        assert api.json("POST", "/api/screen/watch", {"action": "pause"})["paused"]
        assert api.json("GET", "/api/screen/watch")["paused"]
        assert not api.json("POST", "/api/screen/watch", {"action": "resume"})["paused"]
        assert not api.json("POST", "/api/screen/watch", {"action": "stop"})["watching"]
    finally:
        window.close()
        api.request("POST", "/api/screen/watch", {"action": "stop"})


def test_screen_refuses_bad_input_with_clear_errors(desk: Desk) -> None:
    api = desk.api
    assert api.error("POST", "/api/screen/watch", {"action": "explode"})[0] == 400
    assert api.error("POST", "/api/screen/watch", {"action": "start", "interval_seconds": "fast"})[0] == 400
    assert api.error("GET", "/api/screen/search?limit=-3")[0] == 400
    assert api.error("GET", "/api/screen/frames/0123456789abcdef.jpg")[0] == 404
    assert api.error("POST", "/api/screen/ask", {"question": " "})[0] == 400
    assert api.error("POST", "/api/screen/ask", {"question": "what?", "until": 1})[0] == 404  # nothing that old
    if not api.json("GET", "/api/screen/watch")["watching"]:
        status, message = api.error("POST", "/api/screen/watch", {"action": "pause"})
        assert status == 400 and "not being watched" in message
    assert json.loads(api.request("GET", "/api/screen/search", token=None)[2])["error"]["code"] == "invalid_api_key"


# -- in the browser ------------------------------------------------------------------------------------------


def js_true(browser: Browser, script: str, timeout: float = 60.0) -> Any:
    """Wait until the script returns something truthy in the page."""
    return browser.wait(lambda: browser.run(script), timeout, what=script)


def test_the_documents_view_lists_a_dropped_pdf_and_its_citations_open_the_page(browser: Browser) -> None:
    browser.show("documents")
    browser.drop("#doc-drop", "dropped.pdf", "application/pdf", make_report(10, lines=3))  # from the file manager
    js_true(browser, "return document.querySelectorAll('#doc-pages li').length === 10")
    assert browser.text("#doc-pages li:last-child small") == " scan"
    browser.wait(lambda: "dropped.pdf" in browser.text("#doc-list"), what="the PDF in the list")
    browser.find("#doc-question").send_keys("What is the lantern code?")
    browser.find("#doc-ask button").click()
    js_true(browser, "return document.querySelector('#doc-citations .w2-chip')")
    cited = browser.run("return [...document.querySelectorAll('#doc-citations .w2-chip')].map(b => +b.dataset.page)")
    assert cited and set(cited) <= set(range(1, 11))
    browser.find("#doc-citations .w2-chip[data-page='10']").click()  # the scan opens as the model saw it
    js_true(browser, "return document.querySelector('#doc-page img.w2-scan')?.naturalWidth > 100")
    browser.screenshot("documents")
    browser.find("#doc-citations .w2-chip[data-page='3']").click()
    js_true(browser, "return document.querySelector('#doc-page pre')?.textContent.includes('page 3')")


def test_an_encrypted_pdf_is_opened_with_its_password_from_the_page(browser: Browser) -> None:
    browser.show("documents")
    browser.drop("#doc-drop", "locked.pdf", "application/pdf", encrypt(make_report(3, lines=4), "s3cret"))
    js_true(browser, "return document.querySelector('#doc-password')")
    assert "give its password" in browser.text("#doc-progress")
    browser.find("#doc-password").send_keys("wrong\n")
    js_true(browser, "return document.querySelector('#doc-progress')?.textContent.includes('does not open')")
    browser.find("#doc-password").send_keys("s3cret\n")
    js_true(browser, "return document.querySelectorAll('#doc-pages li').length === 3")
    browser.wait(lambda: "locked.pdf" in browser.text("#doc-list"), what="the PDF in the list")
    browser.find("#doc-delete").click()  # asks once more on the button, then deletes
    assert browser.text("#doc-delete") == "Delete?"
    browser.find("#doc-delete").click()
    browser.wait(lambda: "locked.pdf" not in browser.text("#doc-list"), what="the PDF gone from the list")


def test_the_meetings_view_shows_a_growing_transcript_from_the_microphone(desk: Desk, browser: Browser,
                                                                          tmp_path: Path) -> None:
    mic = desk.need_mic()
    player = mic.play(speech_wav(tmp_path, 40))
    try:
        browser.show("meetings")
        js_true(browser, "return [...document.querySelectorAll('#meeting-device option')].some(o => o.value == "
                         "'pulse')")
        browser.run("document.querySelector('#meeting-device').value = 'pulse'")
        browser.find("#meeting-title").send_keys("Browser standup")
        browser.find("#meeting-record").click()
        js_true(browser, "return document.querySelector('#meeting-state').dataset.state === 'recording'")
        js_true(browser, "return document.querySelectorAll('#meeting-transcript li').length >= 1", 120)
        browser.screenshot("meetings-live")
        js_true(browser, "return document.querySelectorAll('#meeting-transcript li').length >= 2", 120)  # it grew
        browser.find("#meeting-stop").click()
        js_true(browser, "return document.querySelector('#meeting-state').dataset.state === 'none'", 120)
    finally:
        player.kill()
    js_true(browser, "return document.querySelector('#meeting-summary h3')")
    browser.find("#meeting-search").send_keys("Browser\n")
    js_true(browser, "return document.querySelectorAll('#meeting-list [data-meeting]').length === 1")
    browser.screenshot("meetings")
    browser.find("#meeting-list [data-meeting]").click()  # a past meeting: its transcript, and Delete
    js_true(browser, "return document.querySelector('#meeting-delete')")
    browser.find("#meeting-delete").click()
    browser.find("#meeting-delete").click()
    js_true(browser, "return document.querySelectorAll('#meeting-list [data-meeting]').length === 0")
    assert "deleted" in browser.text("#meeting-heading")


def test_the_screen_view_finds_a_frame_and_pauses_the_watcher(desk: Desk, browser: Browser) -> None:
    xvfb = desk.need_screen()
    window = TkWindow(xvfb.display, "Browser Ledger", "500x400+100+100", "#c04020")
    try:
        window.focus()
        browser.show("screen")
        js_true(browser, "return !document.querySelector('#screen-start').hidden")
        browser.find("#screen-start").click()
        js_true(browser, "return document.querySelector('#screen-state').dataset.state === 'watching'")
        browser.find("#screen-query").send_keys("Ledger")
        found = "return [...document.querySelectorAll('#screen-results strong')].map(e => e.textContent)"
        deadline = time.monotonic() + 60
        while True:  # the watcher stores its first frame within a second or so: search until it is there
            browser.find("#screen-search button").click()
            time.sleep(0.5)
            hits = browser.run(found)
            if hits and all("Browser Ledger" in hit for hit in hits):
                break
            assert time.monotonic() < deadline, f"the search never found the window's frame: {hits}"
        browser.find("#screen-results .w2-frame").click()
        js_true(browser, "return document.querySelector('#screen-frame')?.naturalWidth > 0")
        assert "Browser Ledger" in browser.text("#screen-viewer h3")
        browser.find("#screen-question").send_keys("Which window was open?\n")
        js_true(browser, "return document.querySelector('#screen-answer').textContent.length > 0", 120)
        browser.find("#screen-pause").click()
        js_true(browser, "return document.querySelector('#screen-state').dataset.state === 'paused'")
        browser.screenshot("screen")
        browser.find("#screen-stop").click()
        js_true(browser, "return document.querySelector('#screen-state').dataset.state === 'off'")
    finally:
        window.close()
        desk.api.request("POST", "/api/screen/watch", {"action": "stop"})


def test_the_views_raised_no_script_error_and_nothing_was_refused_by_the_csp(browser: Browser) -> None:
    """After the tests above: the browser's log holds no script error and no Content-Security-Policy refusal
    (a refused request the views answered with their error bar, a wrong password, is the network's line)."""
    for view in ("documents", "meetings", "screen"):
        browser.show(view)
    problems = [e["message"] for e in browser.driver.get_log("browser")
                if e["level"] == "SEVERE" and (e["source"] != "network" or "Content Security Policy" in e["message"])]
    assert problems == []
