"""The browser suites' fixtures (`playwright`, `browser`, `open_page`: tests/browser_fixture.py),
registered once for every test in this folder."""

from browser_fixture import browser_fixture, open_page_fixture, playwright_fixture

__all__ = ["browser_fixture", "open_page_fixture", "playwright_fixture"]
