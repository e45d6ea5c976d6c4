"""Screenshots of the web page for the README: its chat, and its documents view. `bash scripts/screenshots`, or run
this with the venv's Python, optionally naming the two PNGs to write (default docs/web.png and
docs/web-documents.png).

Everything is real and local, as in tests/test_web_page.py and tests/test_web_views.py: the daemon on the tiny
test model (written into a temp folder) with its HTTP listener, headless Chromium logged in through a one-time
link; in the chat an image dropped and a question asked; in the documents view a PDF dropped, a question asked and
a scanned page opened from the answer's sources. The tiny model's weights are random: its answers are noise.
"""
from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from _common import start_daemon, test_model_args  # noqa: E402
from conftest import png_bytes  # noqa: E402
from documents_pdfs import make_report  # noqa: E402
from web_browser import Browser, chromium  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402

#: The random weights repeat one word up to the daemon's 512-token limit, and the page sends no max_tokens: for a
#: readable picture its chat and document questions ask for a short answer.
_SHORT_ANSWERS = """
const send = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith("/v1/chat/completions") || String(url).endsWith("/ask")) {
    init = { ...init, body: JSON.stringify({ ...JSON.parse(init.body), max_tokens: 40 }) };
  }
  return send(url, init);
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot_chat(browser: Browser, out: Path) -> None:
    browser.show("chat")
    browser.run("document.getElementById('chat-thinking').value = 'none'")
    browser.drop("#view-chat", "photo.png", "image/png", png_bytes(7, (240, 160)))
    browser.wait(lambda: browser.run("return document.querySelectorAll('#chat-attachments img').length"))
    browser.find("#chat-input").send_keys("What is in this picture?\n")
    browser.wait(lambda: browser.run("return document.querySelector('.msg.assistant[data-done]')"),
                 timeout=120, what="the answer")
    browser.run("document.querySelector('#chat-input').blur()")
    _save(browser, "web", out)


def shoot_documents(browser: Browser, out: Path) -> None:
    browser.show("documents")
    browser.drop("#doc-drop", "quarterly-report.pdf", "application/pdf", make_report(10, lines=12))
    browser.wait(lambda: browser.run("return document.querySelectorAll('#doc-pages li').length === 10"))
    browser.find("#doc-question").send_keys("What is the lantern code on page 1?\n")
    browser.wait(lambda: browser.run("return document.querySelector('#doc-citations .w2-chip')"),
                 timeout=120, what="the answer")
    browser.find("#doc-citations .w2-chip[data-page='10']").click()
    browser.wait(lambda: browser.run("return document.querySelector('#doc-page img')?.naturalWidth"))
    browser.run("document.activeElement.blur()")
    _save(browser, "web-documents", out)


def _save(browser: Browser, name: str, out: Path) -> None:
    shot = browser.screenshot(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(shot.read_bytes())
    print(f"wrote {out}")


def main(argv: list[str]) -> int:
    chat_png = Path(argv[0]) if argv else ROOT / "docs" / "web.png"
    documents_png = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "web-documents.png"
    with tempfile.TemporaryDirectory(prefix="omnid-screenshot-") as folder:
        tmp = Path(folder)
        daemon = start_daemon(tmp, test_model_args(tmp), ["--threads", "1", "--ctx", "4096", "--cache-disk", "off",
                                                          "--http", f"127.0.0.1:{free_port()}",
                                                          "--token-file", str(tmp / "token")])
        try:
            with chromium(tmp / "shots") as browser, OmniClient(f"unix:{daemon.socket}") as client:
                browser.login(client)
                browser.run(_SHORT_ANSWERS)
                shoot_chat(browser, chat_png)
                shoot_documents(browser, documents_png)
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
