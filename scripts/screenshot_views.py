"""A screenshot of the web page's documents view, for the README: `bash scripts/screenshots` (or run this with
the venv's Python, optionally naming the PNG to write; default docs/web-documents.png).

Real and local, as in tests/test_web_views.py: the daemon on the tiny test model with its HTTP listener,
headless Chromium logged in through a one-time link, a PDF dropped on the view, a question asked and a scanned
page opened from the answer's sources. The tiny model's weights are random: its answer is noise (cut short).
"""
from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from _common import start_daemon, test_model_args  # noqa: E402
from documents_pdfs import make_report  # noqa: E402
from web_browser import chromium  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402

#: The page sends no max_tokens; for a readable picture the random weights' answer is cut short.
_SHORT_ANSWERS = """
const send = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith("/ask")) {
    init = { ...init, body: JSON.stringify({ ...JSON.parse(init.body), max_tokens: 40 }) };
  }
  return send(url, init);
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT / "docs" / "web-documents.png"
    with tempfile.TemporaryDirectory(prefix="omnid-screenshot-") as folder:
        tmp = Path(folder)
        daemon = start_daemon(tmp, test_model_args(tmp), ["--threads", "1", "--ctx", "4096", "--cache-disk", "off",
                                                          "--http", f"127.0.0.1:{free_port()}",
                                                          "--token-file", str(tmp / "token")])
        try:
            with chromium(tmp / "shots") as browser, OmniClient(f"unix:{daemon.socket}") as client:
                browser.login(client)
                browser.show("documents")
                browser.run(_SHORT_ANSWERS)
                browser.drop("#doc-drop", "quarterly-report.pdf", "application/pdf", make_report(10, lines=12))
                browser.wait(lambda: browser.run("return document.querySelectorAll('#doc-pages li').length === 10"))
                browser.find("#doc-question").send_keys("What is the lantern code on page 1?\n")
                browser.wait(lambda: browser.run("return document.querySelector('#doc-citations .w2-chip')"),
                             timeout=120, what="the answer")
                browser.find("#doc-citations .w2-chip[data-page='10']").click()
                browser.wait(lambda: browser.run("return document.querySelector('#doc-page img')?.naturalWidth"))
                browser.run("document.activeElement.blur()")
                shot = browser.screenshot("web-documents")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(shot.read_bytes())
                print(f"wrote {out}")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
