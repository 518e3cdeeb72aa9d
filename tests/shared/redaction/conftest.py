"""The Azure AI Language stand-in, started once for these tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_language import FakeLanguage


@pytest.fixture(scope="module")
def language_server() -> Iterator[FakeLanguage]:
    fake = FakeLanguage().start()
    yield fake
    fake.stop()


@pytest.fixture
def language(language_server: FakeLanguage, monkeypatch: pytest.MonkeyPatch) -> FakeLanguage:
    """The stand-in, fresh; the process looks like an App Service with a managed identity."""
    language_server.reset()
    for name, value in language_server.identity.environment.items():
        monkeypatch.setenv(name, value)
    return language_server
