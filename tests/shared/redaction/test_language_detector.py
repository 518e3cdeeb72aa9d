"""Azure AI Language PII detection through a stand-in speaking its REST shape (the real
`azure-ai-textanalytics` client and the real managed-identity credential talk to it): kinds and
offsets, the service's limits (5 documents a call, 5,120 characters a document), an outage, and
the offline detector covering for it only when it finds every kind asked for."""

from __future__ import annotations

import pytest
from azure.identity.aio import ManagedIdentityCredential

from local_host.azurite import free_port
from shared.platform.errors import RedactionUnavailable
from shared.platform.settings import EntityKind, RedactionMode
from shared.redaction.detectors import CoveredDetector, LanguageDetector, OfflineDetector
from shared.redaction.redactor import Redactor
from tests.fake_language import MAX_DOCUMENT_CHARS, FakeLanguage


def detector(endpoint: str, timeout: float = 10.0) -> LanguageDetector:
    return LanguageDetector(endpoint=endpoint, credential=ManagedIdentityCredential(), timeout_seconds=timeout)


async def test_names_and_emails_are_found_with_the_service_s_offsets(language: FakeLanguage) -> None:
    language.entities.update({"Margaret Hamilton": "Person", "mh@example.com": "Email", "Acme": "Organization"})
    found = detector(language.url)
    redactor = Redactor(detector=found, mode=RedactionMode.MASK, kinds=[EntityKind.PERSON, EntityKind.EMAIL], key=None)
    try:
        texts = await redactor.redact_texts(["Ask Margaret Hamilton at mh@example.com", "Acme calls Margaret Hamilton"])
    finally:
        await found.close()
    assert texts == ["Ask [PERSON] at [EMAIL]", "Acme calls [PERSON]"]  # ORGANIZATION was not asked for
    (call,) = language.requests
    assert call["query"]["api-version"] == "2023-04-01"
    assert call["headers"]["authorization"].startswith("Bearer ")
    body = call["body"]
    assert body["kind"] == "PiiEntityRecognition"
    assert sorted(body["parameters"]["piiCategories"]) == ["Email", "Person"]
    assert body["parameters"]["stringIndexType"] == "UnicodeCodePoint"
    assert body["parameters"]["loggingOptOut"] is True
    assert [d["text"] for d in body["analysisInput"]["documents"]] == [
        "Ask Margaret Hamilton at mh@example.com",
        "Acme calls Margaret Hamilton",
    ]


async def test_long_texts_and_many_texts_fit_the_service_s_limits(language: FakeLanguage) -> None:
    language.entities["mh@example.com"] = "Email"
    long_text = ("word " * 3000) + "mh@example.com " + ("more " * 2000) + "mh@example.com"
    texts = [long_text, *(f"note {n} mh@example.com" for n in range(9))]
    found = detector(language.url)
    redactor = Redactor(detector=found, mode=RedactionMode.MASK, kinds=[EntityKind.EMAIL])
    try:
        redacted = await redactor.redact_texts(texts)
    finally:
        await found.close()
    assert redacted[0] == long_text.replace("mh@example.com", "[EMAIL]")
    assert redacted[1:] == [f"note {n} [EMAIL]" for n in range(9)]
    documents = [d for call in language.requests for d in call["body"]["analysisInput"]["documents"]]
    assert all(len(call["body"]["analysisInput"]["documents"]) <= 5 for call in language.requests)
    assert all(len(d["text"]) <= MAX_DOCUMENT_CHARS for d in documents)
    assert len(documents) >= 12  # the long text went in pieces


async def test_an_unreachable_or_failing_service_is_redaction_unavailable(language: FakeLanguage) -> None:
    dead = detector(f"http://127.0.0.1:{free_port()}")
    failing = detector(language.url)
    language.failing = True
    try:
        for unavailable in (dead, failing):
            with pytest.raises(RedactionUnavailable):
                await unavailable.detect(["mh@example.com"], frozenset({EntityKind.EMAIL}))
    finally:
        await dead.close()
        await failing.close()


async def test_the_offline_detector_covers_an_outage_for_kinds_it_finds(language: FakeLanguage) -> None:
    language.failing = True
    covered = CoveredDetector(detector(language.url), OfflineDetector())
    redactor = Redactor(detector=covered, mode=RedactionMode.MASK, kinds=[EntityKind.EMAIL])
    try:
        assert await redactor.redact_texts(["write mh@example.com"]) == ["write [EMAIL]"]
    finally:
        await covered.close()
    assert language.requests  # Azure AI Language was asked first
