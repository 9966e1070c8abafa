"""Headless Chromium for the browser tests: Debian's ``chromium`` driven through its ``chromedriver``.

scripts/test.sh installs both (apt packages chromium and chromium-driver); selenium comes with the
``test`` extra. :func:`unavailable` says why a browser cannot be started here, for a clean skip.

The browser starts with a new, empty profile and without its background services (sync, component
updates, safe-browsing lookups): a test machine may have no network but loopback, and Chromium's own
connections would only fail there. Every network request the page makes is recorded in Chrome's
performance log; :func:`requests_made` reads it back. :func:`ask` uses the chat page (llama.cpp's
web UI) as a person would: types a question, sends it, waits for the whole streamed answer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
)

# The chat page's elements (llama.cpp's tools/ui): its input is a textarea or, with rich input on, a
# contenteditable box, disabled until the server has answered; Send and Stop are icon buttons named by
# screen-reader text.
CHAT_INPUT = (
    "form.conversation-chat-form textarea:not([disabled]), "
    "form.conversation-chat-form [role='textbox'][contenteditable='true']"
)
SEND_BUTTON = "//button[@type='submit'][.//span[normalize-space()='Send']]"
STOP_BUTTON = "//button[.//span[normalize-space()='Stop']]"
ANSWER = "[aria-label='Assistant message with actions'] .markdown-content"


def chromium_path() -> str | None:
    """Chromium's executable: ``LLCUDA_CHROMIUM``, else ``chromium`` on PATH."""
    return os.environ.get("LLCUDA_CHROMIUM") or shutil.which("chromium")


def chromedriver_path() -> str | None:
    """ChromeDriver's executable: ``LLCUDA_CHROMEDRIVER``, else ``chromedriver`` on PATH."""
    return os.environ.get("LLCUDA_CHROMEDRIVER") or shutil.which("chromedriver")


def unavailable() -> str | None:
    """Why no browser can be driven here (and how to fix it), or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    missing = [
        name for name, path in (("chromium", chromium_path()), ("chromedriver", chromedriver_path())) if path is None
    ]
    if missing:
        return (
            f"{' and '.join(missing)} not found: scripts/test.sh installs them "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 860, profile: Path | None = None) -> Iterator[Any]:
    """A headless Chromium WebDriver with a window of ``width`` x ``height`` CSS pixels; quit on exit.

    ``profile`` is the user-data folder (a new temporary one when None, removed afterwards).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="llcuda-chromium-") as scratch:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium_path() or ""
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={profile or Path(scratch) / 'profile'}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=chromedriver_path() or "", log_output=str(Path(scratch) / "driver.log"))
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(120)
            yield driver
        finally:
            driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], T], timeout: float, what: str) -> T:
    """Poll ``condition(driver)`` until it returns something truthy; after ``timeout`` s, fail naming
    ``what`` and showing the browser console. A condition that meets a stale element is polled again."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(condition)
    except TimeoutException:
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}; browser console:\n{console_text(driver)}"
        ) from None


@dataclass(frozen=True)
class Request:
    """One HTTP request of the page, with its response as Chrome saw it (status 0: no response)."""

    method: str
    url: str
    status: int
    mime_type: str
    request_headers: dict[str, str]
    post_data: str | None


def requests_made(driver: Any, log: list[dict[str, Any]] | None = None) -> list[Request]:
    """The HTTP requests of the page since the last call, from Chrome's performance log, in order
    (the browser's own chrome:// pages and data: URLs left out).

    The log is consumed by reading it; pass a list as ``log`` to also keep the raw events.
    """
    sent: dict[str, dict[str, Any]] = {}
    answered: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if log is not None:
            log.append(event)
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            if not params["request"].get("url", "").startswith(("http:", "https:")):
                continue
            rid = params["requestId"]
            if rid not in sent:
                order.append(rid)
            sent[rid] = params["request"]
        elif event["method"] == "Network.responseReceived":
            answered[params["requestId"]] = params["response"]
    made = []
    for rid in order:
        request, response = sent[rid], answered.get(rid, {})
        made.append(
            Request(
                method=request.get("method", ""),
                url=request.get("url", ""),
                status=int(response.get("status", 0)),
                mime_type=response.get("mimeType", ""),
                request_headers=dict(request.get("headers", {})),
                post_data=request.get("postData"),
            )
        )
    return made


def ask(driver: Any, url: str, question: str, timeout: float = 300) -> str:
    """Open the chat page at ``url``, send ``question``, wait for the whole streamed answer; return its text.

    Fails (AssertionError naming the step) when the input, an enabled Send button, the answer's first
    words or the end of its stream do not come within their time. The page re-renders while it loads
    and streams: every step finds its elements anew and is retried when one goes stale.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def shown(by: str, selector: str) -> Callable[[Any], Any]:
        def find(d: Any) -> Any:
            return next((e for e in d.find_elements(by, selector) if e.is_displayed()), None)

        return find

    def value(box: Any) -> str:
        return (box.get_attribute("value") if box.tag_name == "textarea" else box.text) or ""

    def typed(d: Any) -> bool:
        box = shown(By.CSS_SELECTOR, CHAT_INPUT)(d)
        if box is None:
            return False
        if value(box) != question:
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(question)
        return value(box) == question

    def sent(d: Any) -> bool:
        button = next((b for b in d.find_elements(By.XPATH, SEND_BUTTON) if b.is_enabled()), None)
        if button is None:
            return False
        button.click()
        return True

    def answer(d: Any) -> str:
        texts = [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, ANSWER)]
        return texts[-1] if texts else ""

    driver.get(url.rstrip("/") + "/")
    wait_for(driver, typed, 120, "the chat input to be enabled and take the question")
    wait_for(driver, sent, 120, "an enabled Send button")
    wait_for(driver, answer, timeout, "the first words of the assistant's answer")
    wait_for(
        driver,
        lambda d: shown(By.XPATH, STOP_BUTTON)(d) is None,
        timeout,
        "the end of the answer's stream (the Stop button to go)",
    )
    return wait_for(driver, answer, 30, "the answer's text")


def console_text(driver: Any) -> str:
    """The browser console's messages so far, one a line (for failure messages)."""
    try:
        lines = [f"{m.get('level')}: {m.get('message')}" for m in driver.get_log("browser")]
        return "\n".join(lines) or "(empty)"
    except Exception as exc:  # the session may already be gone; the message is only for a report
        return f"(unreadable: {exc})"
