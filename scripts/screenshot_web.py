"""A screenshot of the web page's chat, for the README: `bash scripts/screenshots` (or run this with the venv's
Python, optionally naming the PNG to write; default docs/web.png).

Everything is real and local, as in tests/test_web_page.py: the daemon on the tiny test model (written into a
temp folder) with its HTTP listener, headless Chromium logged in through a one-time link, an image dropped
into the chat and a question asked. The tiny model's weights are random: its answer is noise (cut short).
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
from web_browser import chromium  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402


#: The random weights repeat one word up to the daemon's 512-token limit: for a readable picture, the page's
#: requests ask for a short answer (the page itself sends no max_tokens).
_SHORT_ANSWERS = """
const send = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith("/v1/chat/completions")) {
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
    out = Path(argv[0]) if argv else ROOT / "docs" / "web.png"
    with tempfile.TemporaryDirectory(prefix="omnid-screenshot-") as folder:
        tmp = Path(folder)
        daemon = start_daemon(tmp, test_model_args(tmp), ["--threads", "1", "--ctx", "4096", "--cache-disk", "off",
                                                          "--http", f"127.0.0.1:{free_port()}",
                                                          "--token-file", str(tmp / "token")])
        try:
            with chromium(tmp / "shots") as browser, OmniClient(f"unix:{daemon.socket}") as client:
                browser.login(client)
                browser.show("chat")
                browser.run("document.getElementById('chat-thinking').value = 'none'")
                browser.run(_SHORT_ANSWERS)
                browser.drop("#view-chat", "photo.png", "image/png", png_bytes(7, (240, 160)))
                browser.wait(lambda: browser.run("return document.querySelectorAll('#chat-attachments img').length"))
                browser.find("#chat-input").send_keys("What is in this picture?\n")
                browser.wait(lambda: browser.run("return document.querySelector('.msg.assistant[data-done]')"),
                             timeout=120, what="the answer")
                browser.run("document.querySelector('#chat-input').blur()")
                shot = browser.screenshot("web")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(shot.read_bytes())
                print(f"wrote {out}")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
