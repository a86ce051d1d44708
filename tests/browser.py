"""Headless Chromium for the HTML report's tests: fixtures ``browser`` and ``open_report``.

Debian's ``chromium`` driven by Playwright, offline; the tests that use them are skipped, saying why,
where either is missing (``.ci/run`` installs both). Import both fixtures into a test module.
"""
from __future__ import annotations

import shutil

import pytest

_NO_BROWSER = ('headless Chromium is not available: the HTML report is checked in a real browser with Debian\'s '
               '`chromium` package (apt-get install chromium) driven by Playwright (pip install playwright); '
               '.ci/run installs both')


@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api', reason=_NO_BROWSER)
    executable = shutil.which('chromium') or shutil.which('chromium-browser')
    if executable is None:
        pytest.skip(_NO_BROWSER)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=['--no-sandbox'])
        yield launched
        launched.close()


@pytest.fixture
def open_report(browser):
    """``open_report(path, ready=...)`` -> the page, loaded offline, once the ``ready`` expression holds (default:
    the report's hook says so; None for a page without script); after the test: no request but the file itself,
    no console error, no uncaught exception."""
    contexts, problems, requests, opened = [], [], [], set()

    def open_(path, ready: str | None = 'window.report && window.report.ready === true'):
        context = browser.new_context(offline=True, accept_downloads=True, viewport={'width': 1400, 'height': 900})
        contexts.append(context)
        page = context.new_page()
        page.on('console', lambda message: message.type in ('error', 'warning') and problems.append(message.text))
        page.on('pageerror', lambda error: problems.append(str(error)))
        page.on('request', lambda request: requests.append(request.url))
        opened.add(path.as_uri())
        page.goto(path.as_uri())
        if ready is not None:
            page.wait_for_function(ready)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert problems == []
    assert set(requests) <= opened  # pictures are data: URIs, downloads blob: URLs: neither is fetched


def counts(page) -> tuple[int, int]:
    """The kept and dropped counts the page shows."""
    return int(page.text_content('#kept-count')), int(page.text_content('#dropped-count'))
