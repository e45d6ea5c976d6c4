"""The local web page as a person uses it: a real `omnid serve --http` on the tiny omni model, the one-time
login link of the public client library, and real headless Chromium (tests/web_browser.py); plus plain HTTP
where the wire is the point (401s, the cookie's attributes, Origin checks).

Random weights: assertions are on structure (an answer arrives, usage with cached tokens), never on wording.
"""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from typing import Any

import grpc
import pytest

from conftest import png_bytes, wav_bytes
from omnid.clients import menubar_state as st
from omnid.clients.client import OmniError
from omnid.daemon.web import auth
from web_browser import Browser, chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Web:
    """The daemon with its web page, and plain HTTP to it."""

    def __init__(self, daemon: Any, port: int, token: str) -> None:
        self.daemon, self.port, self.token = daemon, port, token
        self.base = f"http://127.0.0.1:{port}/"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def login(self) -> str:
        """A session cookie ('omnid_session=...'), as the browser gets it from a one-time link."""
        with self.daemon.client() as client:
            link = client.login_link()
        status, headers, _ = self.request("GET", link.removeprefix(self.base[:-1]))
        assert status == 303 and headers["location"] == "/", (status, headers)
        return headers["set-cookie"].split(";", 1)[0]


@pytest.fixture(scope="module")
def web(start_daemon, tmp_path_factory) -> Web:
    port = free_port()
    token_file = tmp_path_factory.mktemp("token") / "token"
    daemon = start_daemon("--http", f"127.0.0.1:{port}", "--token-file", str(token_file))
    return Web(daemon, port, token_file.read_text().strip())


@pytest.fixture(scope="module")
def browser(tmp_path_factory, web: Web) -> Any:
    with chromium(tmp_path_factory.mktemp("shots")) as b:
        with web.daemon.client() as client:
            b.login(client)
        yield b


CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()


# -- login, cookie, refusals (plain HTTP) ---------------------------------------------------------------------


def test_status_reports_the_page_and_a_login_link_opens_it(web: Web) -> None:
    with web.daemon.client() as client:
        status = client.status()
        link = client.login_link()
    assert status.http_url == web.base and st.http_url(status) == web.base
    assert link.startswith(web.base + "login?once=") and len(link) > len(web.base) + 40
    assert web.token not in link  # the token never goes into a URL


def test_the_one_time_code_sets_a_strict_httponly_cookie_once_only(web: Web) -> None:
    with web.daemon.client() as client:
        path = client.login_link().removeprefix(web.base[:-1])
    status, headers, _ = web.request("GET", path)
    assert status == 303 and headers["location"] == "/"
    attributes = [a.strip() for a in headers["set-cookie"].split(";")]
    assert attributes[0].startswith("omnid_session=") and len(attributes[0]) > 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    again, _, body = web.request("GET", path)
    assert again == 401 and b"used already or has expired" in body
    assert web.request("GET", "/login?once=guess")[0] == 401
    assert web.request("GET", "/login")[0] == 401


@pytest.mark.parametrize("path", ["/", "/static/common.js", "/static/views/chat.js", "/api/status", "/v1/models"])
def test_without_cookie_or_token_everything_answers_401(web: Web, path: str) -> None:
    status, headers, body = web.request("GET", path)
    assert status == 401
    if path.startswith(("/api/", "/v1/")):
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    else:  # a browser gets a page that says what to do
        assert headers["content-type"].startswith("text/html") and b"omni web" in body
    assert web.request("GET", path, {"Cookie": "omnid_session=forged"})[0] == 401
    assert web.request("POST", "/v1/chat/completions", {"Content-Type": "application/json"}, CHAT)[0] == 401


def test_the_cookie_opens_the_page_the_api_and_v1(web: Web) -> None:
    cookie = {"Cookie": web.login()}
    status, headers, body = web.request("GET", "/", cookie)
    assert status == 200 and b'data-view="chat"' in body
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    for path in ("/static/app.css", "/static/icon.svg", "/static/shell.js", "/static/views/status.js"):
        assert web.request("GET", path, cookie)[0] == 200, path
    status, _, body = web.request("GET", "/api/status", cookie)
    reply = json.loads(body)
    assert status == 200 and reply["model_name"] and reply["http_url"] == web.base and "cache" in reply
    assert web.request("GET", "/v1/models", cookie)[0] == 200


def test_a_cookie_changes_something_only_from_the_page_itself(web: Web) -> None:
    cookie = {"Cookie": web.login(), "Content-Type": "application/json"}
    own = {**cookie, "Origin": f"http://127.0.0.1:{web.port}"}
    status, _, body = web.request("POST", "/v1/chat/completions", own, CHAT)
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1
    # no Origin, or another loopback port's page (the same "site" to the browser's SameSite)
    for headers in (cookie, {**cookie, "Origin": f"http://127.0.0.1:{web.port + 1}"},
                    {**cookie, "Origin": f"http://localhost:{web.port}"}):
        status, _, body = web.request("POST", "/v1/chat/completions", headers, CHAT)
        assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_origin", headers
    # the token alone still works as before (an OpenAI client sends no Origin)
    bearer = {"Authorization": f"Bearer {web.token}", "Content-Type": "application/json"}
    assert web.request("POST", "/v1/chat/completions", bearer, CHAT)[0] == 200


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Host": "evil.example"},
                                     {"Origin": "http://127.0.0.1.evil.example"}])
def test_a_foreign_origin_or_host_is_refused_even_with_a_session(web: Web, headers: dict[str, str]) -> None:
    sent = {"Cookie": web.login(), **headers}
    for path in ("/", "/api/status", "/login?once=x"):
        status, _, body = web.request("GET", path, sent)
        assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_host", (path, headers)


def test_codes_expire_in_a_minute_and_sessions_in_a_day() -> None:
    now = [1000.0]
    logins = auth.Logins(clock=lambda: now[0])
    late, spent = logins.mint(), logins.mint()
    session = logins.redeem(spent)
    assert session and logins.valid(session) and logins.redeem(spent) is None
    now[0] += auth.CODE_SECONDS + 1
    assert logins.redeem(late) is None and logins.valid(session)
    now[0] += auth.SESSION_SECONDS
    assert not logins.valid(session) and not logins.valid("") and not logins.valid(spent)
    assert auth.cookie_session(b"a=1; omnid_session=xyz ; b=2") == "xyz" and auth.cookie_session(b"") == ""


def test_without_http_there_is_no_page_and_no_login_link(daemon) -> None:
    with daemon.client() as client:
        assert client.status().http_url == ""
        with pytest.raises(OmniError) as refused:
            client.login_link()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--http" in refused.value.details()


def test_omni_web_prints_a_link_that_logs_in(web: Web) -> None:
    result = subprocess.run([sys.executable, "-m", "omnid.clients.cli", "--socket", str(web.daemon.socket), "web",
                             "--print"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    shown = subprocess.run([sys.executable, "-m", "omnid.clients.cli", "--socket", str(web.daemon.socket), "status"],
                           capture_output=True, text=True, timeout=60)
    assert f"web page   {web.base}" in shown.stdout
    status, headers, _ = web.request("GET", link.removeprefix(web.base[:-1]))
    assert status == 303 and "omnid_session=" in headers["set-cookie"]


def test_the_menubar_asks_with_a_login_link(web: Web, daemon) -> None:
    with web.daemon.client() as client:
        link = st.ask_url(client, st.read_view(client, lists=st.Lists()))
    assert link.startswith(web.base + "login?once=")
    assert web.request("GET", link.removeprefix(web.base[:-1]))[0] == 303
    with daemon.client() as client:  # no web page: the native dialog instead
        assert st.ask_url(client, st.read_view(client, lists=st.Lists())) == ""


# -- the page in Chromium ------------------------------------------------------------------------------------


def _answer(browser: Browser, nth: int) -> dict[str, Any]:
    """The nth answer's text and usage line, once it is done."""
    browser.wait(lambda: browser.run("return document.querySelectorAll('.msg.assistant[data-done]').length")
                 >= nth, timeout=120, what=f"answer {nth}")
    return browser.run("""const m = document.querySelectorAll('.msg.assistant')[arguments[0] - 1];
        const u = m.querySelector('.usage');
        return {text: m.querySelector('.answer').textContent, failed: m.querySelector('.answer.failed') !== null,
                usage: u.hidden ? '' : u.textContent, hover: u.title, cached: Number(u.dataset.cached || -1)}""",
                       nth)


def test_the_shell_shows_its_views_and_the_model(browser: Browser, web: Web) -> None:
    labels = browser.run("return [...document.querySelectorAll('#nav a')].map((a) => a.textContent)")
    assert labels[:1] == ["Chat"] and "Status" in labels
    model = web.daemon.client().status().model_name
    browser.wait(lambda: model in browser.text("#model"), what="the model pill")
    cookies = {c["name"]: c for c in browser.driver.get_cookies()}
    assert cookies["omnid_session"]["httpOnly"] and cookies["omnid_session"]["sameSite"] == "Strict"
    assert browser.run("return document.cookie") == ""  # no script can read the session
    errors = [e["message"] for e in browser.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []  # no script error, nothing the page's Content-Security-Policy blocked


def test_chat_streams_an_answer_about_a_dropped_image(browser: Browser) -> None:
    browser.show("chat")
    browser.drop("#view-chat", "photo.png", "image/png", png_bytes(3, (160, 120)))
    browser.wait(lambda: browser.run("return document.querySelectorAll('#chat-attachments img').length") == 1,
                 what="the image chip")
    browser.find("#chat-input").send_keys("What is in this picture?")
    browser.find("#chat-send").click()
    first = _answer(browser, 1)
    assert not first["failed"], first
    assert first["usage"].endswith(" s") and "tokens" in first["usage"]
    assert "prompt:" in first["hover"] and "cached" in first["hover"]
    assert browser.run("return document.querySelectorAll('.msg.user img.thumb').length") == 1
    folds = browser.run("return [...document.querySelectorAll('.msg.assistant details.thinking')]"
                        ".map((d) => [d.hidden, d.open])")
    assert all(open_ is False for hidden, open_ in folds if not hidden)  # any thinking is shown folded
    browser.screenshot("chat")
    # a follow-up: the whole conversation is sent again, and the daemon's cache finds the turns it has seen
    browser.find("#chat-input").send_keys("And the colours?\n")
    second = _answer(browser, 2)
    assert not second["failed"] and second["cached"] > 0, second


def test_chat_takes_a_pasted_image_and_a_dropped_sound(browser: Browser) -> None:
    browser.show("chat")
    browser.find("#chat-new").click()
    browser.paste("#chat-input", "clip.png", "image/png", png_bytes(5))
    browser.drop("#view-chat", "note.wav", "audio/wav", wav_bytes(440.0, seconds=1.0))
    browser.wait(lambda: browser.run("return document.querySelectorAll('#chat-attachments .chip').length") == 2,
                 what="both chips")
    browser.drop("#view-chat", "notes.txt", "text/plain", b"not media")  # refused, said in the error bar
    browser.wait(lambda: "only images and sound files" in browser.text("#error"), what="the refusal")
    browser.find("#chat-input").send_keys("Describe both.\n")
    answer = _answer(browser, 1)
    assert not answer["failed"], answer
    assert browser.run("return document.querySelectorAll('.msg.user audio').length") == 1


def test_status_view_shows_the_model_cache_and_queue(browser: Browser, web: Web) -> None:
    root = browser.show("status")
    status = web.daemon.client().status()
    browser.wait(lambda: browser.text("#status-model [data-field=name]") == status.model_name, what="the model")
    assert "tokens" in browser.text("#status-model [data-field=context]")
    assert browser.text("#status-cache [data-field=hits]").endswith("misses")
    assert "waiting" in browser.text("#status-queue [data-field=queue]")
    assert root.is_displayed()
    browser.screenshot("status")

