"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser), one
browser for the pane's tests, a fresh context per test, and a local host with keys of each kind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from local_host.azurite import ROOT, Azurite
from shared.platform.access import Right
from tests.callers import start_keyed_host
from tests.conftest import RunningHost
from tests.fakes import FAKE_MODEL, FakeUpstream

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("DISTILLERY_SCREENSHOTS")
"""A folder: the tests write PNGs of the main views there (`make screenshots` sets docs/screenshots)."""

PANE_RIGHTS = {
    "reviewer": {Right.READ, Right.ALL_OWNERS},
    "newcomer": {Right.READ},
    "batch": {Right.INFERENCE},
}
"""`reviewer` reads everything but may change nothing; `newcomer` (owner scoping) sees only its own
completions, which are none; `batch` may call the model but not read the store."""


expect.set_options(timeout=15_000)  # the stack runs on a shared machine: wait for conditions, generously


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: while Playwright's sync API is open it holds a running event loop on this thread,
    which the async tests of later modules could not start theirs under."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def pane_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningHost, dict[str, str]]]:
    running, keys = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("pane-host"),
        PANE_RIGHTS,
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_OWNER_SCOPING="true",
        LOCAL_RETRY_SECONDS="0",
        PRICE_TABLE=json.dumps({FAKE_MODEL: {"input": 2.0, "output": 8.0}}),
    )
    yield running, keys | {"full": running.key}
    running.stop()


@pytest.fixture(scope="session")
def entra_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    """A host behind (simulated) App Service Authentication: it trusts the principal header."""
    running, _ = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("entra-host"),
        {},
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_TRUST_APP_SERVICE_AUTH="true",
    )
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    yield opened
    context.close()


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    """Save a PNG of what the page shows now, when screenshots were asked for."""
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS) if Path(SCREENSHOTS).is_absolute() else ROOT / SCREENSHOTS
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)
