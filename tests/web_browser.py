"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium,
logged in as a person is, through a one-time link of the daemon (CreateLoginLink).

    with chromium(shots_dir) as browser:
        browser.login(client)          # opens the link: the daemon sets the session cookie and redirects to /
        browser.show("status")         # the view of #status
        browser.screenshot("status")   # shots_dir/status.png, checked to be more than one colour

Nothing is fetched from the network: Selenium is given the driver and the browser by path (no Selenium
Manager download), and Chromium's background services are off.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from PIL import Image, ImageStat

from omnid.clients.client import OmniClient

T = TypeVar("T")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
#: The window the screenshots are taken in (the README's docs/web.png too).
WINDOW = (1280, 800)

#: A file dropped onto an element, as a person drags one from the file manager: a DataTransfer holding a File
#: made from base64 bytes, and dragenter / dragover / drop events. arguments: element, name, MIME, base64.
_DROP_JS = """
const [target, name, type, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type }));
for (const kind of ["dragenter", "dragover", "drop"]) {
  target.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}
"""
#: The same file pasted from the clipboard into an element.
_PASTE_JS = """
const [target, name, type, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type }));
target.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
"""


def need_chromium() -> None:
    if not (CHROMIUM and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")


def non_blank(path: Path) -> None:
    """A screenshot shows something: more than a handful of colours and real contrast, not one flat colour."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 16)
        spread = max(ImageStat.Stat(rgb.convert("L")).stddev[0], 0.0)
    assert colours is None or len(colours) > 8, f"{path}: only {len(colours or [])} colours"
    assert spread > 3, f"{path}: flat (stddev {spread:.1f})"


class Browser:
    """A Chromium window on the daemon's page; screenshots go to `shots`."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def login(self, client: OmniClient) -> str:
        """Open a fresh one-time link; returns the page's base URL once the shell is ready."""
        link = client.login_link()
        self.driver.get(link)
        self.wait(lambda: self.run("return document.body && document.body.dataset.ready === 'true'"))
        return link.split("login?", 1)[0]

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], T], timeout: float = 60.0, what: str = "") -> T:
        """condition()'s first truthy value, polled; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}")
            time.sleep(0.1)

    def show(self, view: str) -> Any:
        """Go to a view (#name) and return its root element once it is shown."""
        self.run("location.hash = arguments[0]", view)
        return self.wait(lambda: self.run("const r = document.getElementById('view-' + arguments[0]);"
                                          "return r && !r.hidden ? r : null", view), what=f"the {view} view")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return str(self.run("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css))

    def drop(self, css: str, name: str, mime: str, data: bytes) -> None:
        self.run(_DROP_JS, self.find(css), name, mime, base64.b64encode(data).decode())

    def paste(self, css: str, name: str, mime: str, data: bytes) -> None:
        self.run(_PASTE_JS, self.find(css), name, mime, base64.b64encode(data).decode())

    def screenshot(self, name: str) -> Path:
        """shots/NAME.png of the window, checked non-blank."""
        path = self.shots / f"{name}.png"
        png = self.driver.get_screenshot_as_png()
        Image.open(io.BytesIO(png)).save(path)
        non_blank(path)
        return path


@contextlib.contextmanager
def chromium(shots: Path) -> Iterator[Browser]:
    """Headless Chromium with its driver, closed afterwards."""
    need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-extensions",
                 "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    shots.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    # the page's own size, whatever headless Chromium counts as its window's frame
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": WINDOW[0], "height": WINDOW[1],
                                                                  "deviceScaleFactor": 1, "mobile": False})
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
