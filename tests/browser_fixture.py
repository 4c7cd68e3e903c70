"""Browser fixtures for the page tests: headless Chromium (Debian's package) driven by
Playwright, and a few helpers to talk to the page as a user does.

The browser tests need `/usr/bin/chromium` and the `playwright` Python package (installed by
`scripts/browser-deps`; Playwright's own browser download is never used). Without them they
are skipped locally, but fail under CI (`CI` set), where a skip would hide a broken page.

A test module imports the fixtures (`playwright_fixture`, `browser_fixture`,
`open_page_fixture`: they register as `playwright`, `browser` and `open_page`) and defines its
own `server` fixture (a LiveServer), which `open_page` opens by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server_fixture import LiveServer

try:
    from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
except ImportError:  # pragma: no cover - scripts/browser-deps installs it
    sync_playwright = None  # type: ignore[assignment]

__all__ = [
    "CHROMIUM",
    "ROOT",
    "STATIC",
    "TIMEOUT_MS",
    "PageFactory",
    "ask",
    "browser_fixture",
    "last_answer",
    "open_page_fixture",
    "playwright_fixture",
    "wait_for_end",
]

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "src" / "tokenrelay" / "server" / "static"
CHROMIUM = os.environ.get("TOKENRELAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 15_000
#: the tests' own servers: the page must load nothing from anywhere else
LOCAL = ("http://127.0.0.1:", "data:", "blob:")


@pytest.fixture(scope="module", name="playwright")
def playwright_fixture() -> Iterator[Playwright]:
    problem = None
    if sync_playwright is None:
        problem = "the playwright package is not installed (scripts/browser-deps installs it)"
    elif not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing (scripts/browser-deps installs Debian's chromium)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {problem}")
        pytest.skip(problem)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module", name="browser")
def browser_fixture(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


PageFactory = Callable[..., Page]


@pytest.fixture(name="open_page")
def open_page_fixture(browser: Browser, server: LiveServer) -> Iterator[PageFactory]:
    """Open the page in a fresh browser context. Uncaught page errors fail the test, and so
    does any request to another host (the page must work offline: nothing from a CDN)."""
    contexts = []
    errors: list[str] = []
    foreign: list[str] = []

    def check_host(request: Any) -> None:
        if not request.url.startswith(LOCAL):
            foreign.append(request.url)

    def open_(*, locale: str = "en-US", url: str | None = None, **options: Any) -> Page:
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = browser.new_context(locale=locale, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", check_host)
        page.goto(url or server.url)
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors
    assert not foreign, foreign


def ask(page: Page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("send-button").click()


def wait_for_end(page: Page) -> None:
    expect(page.get_by_test_id("stop-button")).to_be_hidden()
    expect(page.get_by_test_id("send-button")).to_be_enabled()


def last_answer(page: Page) -> Any:
    return page.get_by_test_id("answer").last
