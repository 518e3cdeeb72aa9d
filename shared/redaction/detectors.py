"""Finding personal data in text: Azure AI Language's PII detection, or Presidio's pattern recognizers offline.

Neither detector is ours: Azure AI Language (`azure-ai-textanalytics`, with the app's credential) finds every
kind, names and addresses included; Presidio's predefined recognizers (patterns with checksums and context
rules, no language model, so nothing to download) find the structured identifiers. Azure AI Language is used
when `REDACTION_LANGUAGE_ENDPOINT` is set, the offline detector covering for it while it is unreachable when it
can find every kind asked for; a detector that cannot answer raises `RedactionUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError

from shared.platform.errors import RedactionUnavailable
from shared.platform.settings import EntityKind

log = logging.getLogger(__name__)

_PRESIDIO: dict[EntityKind, tuple[str, str]] = {
    EntityKind.EMAIL: ("EMAIL_ADDRESS", "EmailRecognizer"),
    EntityKind.PHONE: ("PHONE_NUMBER", "PhoneRecognizer"),
    EntityKind.CREDIT_CARD: ("CREDIT_CARD", "CreditCardRecognizer"),
    EntityKind.IBAN: ("IBAN_CODE", "IbanRecognizer"),
    EntityKind.IP_ADDRESS: ("IP_ADDRESS", "IpRecognizer"),
    EntityKind.URL: ("URL", "UrlRecognizer"),
    EntityKind.US_SSN: ("US_SSN", "UsSsnRecognizer"),
    EntityKind.US_BANK_ACCOUNT: ("US_BANK_NUMBER", "UsBankRecognizer"),
    EntityKind.US_PASSPORT: ("US_PASSPORT", "UsPassportRecognizer"),
    EntityKind.US_DRIVER_LICENSE: ("US_DRIVER_LICENSE", "UsLicenseRecognizer"),
}
"""Each kind's Presidio entity and the predefined recognizer that finds it."""
_LANGUAGE_CATEGORIES: dict[EntityKind, str] = {
    EntityKind.EMAIL: "Email",
    EntityKind.PHONE: "PhoneNumber",
    EntityKind.CREDIT_CARD: "CreditCardNumber",
    EntityKind.IBAN: "InternationalBankingAccountNumber",
    EntityKind.IP_ADDRESS: "IPAddress",
    EntityKind.URL: "URL",
    EntityKind.US_SSN: "USSocialSecurityNumber",
    EntityKind.US_BANK_ACCOUNT: "USBankAccountNumber",
    EntityKind.US_PASSPORT: "USUKPassportNumber",
    EntityKind.US_DRIVER_LICENSE: "USDriversLicenseNumber",
    EntityKind.PERSON: "Person",
    EntityKind.ADDRESS: "Address",
    EntityKind.ORGANIZATION: "Organization",
}
OFFLINE_KINDS = frozenset(_PRESIDIO)
"""Every kind but `LANGUAGE_ONLY_KINDS` (tests hold the two to that)."""

LANGUAGE_DOCUMENT_CHARS = 5000
"""Azure AI Language's synchronous PII call takes documents of at most 5,120 characters..."""
LANGUAGE_BATCH_DOCUMENTS = 5
"""...and at most 5 documents a request."""
_LANGUAGE_CONCURRENCY = 4


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: `text[start:end]` is a `kind`."""

    start: int
    end: int
    kind: EntityKind
    score: float


class Detector(Protocol):
    label: str

    async def detect(self, texts: list[str], kinds: frozenset[EntityKind]) -> list[list[Finding]]:
        """The findings of each text, of the kinds asked for; raises `RedactionUnavailable` when it cannot tell."""
        ...

    async def close(self) -> None: ...


class OfflineDetector:
    """Presidio's analyzer with its predefined pattern recognizers and no NLP engine, in a worker thread."""

    label = "offline"

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    async def close(self) -> None:
        pass

    async def detect(self, texts: list[str], kinds: frozenset[EntityKind]) -> list[list[Finding]]:
        try:
            return await asyncio.to_thread(self._detect, texts, kinds)
        except Exception as exc:  # whatever broke, the answer is still served and nothing unredacted is kept
            # The type only: a message could quote the text.
            log.error("The offline PII detector failed (%s)", type(exc).__name__)
            raise RedactionUnavailable("The offline PII detector failed.") from exc

    def _detect(self, texts: list[str], kinds: frozenset[EntityKind]) -> list[list[Finding]]:
        engine = self._analyzer()
        entities = [_PRESIDIO[kind][0] for kind in kinds if kind in _PRESIDIO]
        by_entity = {entity: kind for kind, (entity, _) in _PRESIDIO.items()}
        if not entities:
            return [[] for _ in texts]
        return [
            [
                Finding(result.start, result.end, by_entity[result.entity_type], result.score)
                for result in engine.analyze(text=text, language="en", entities=entities)
            ]
            for text in texts
        ]

    def _analyzer(self) -> Any:
        """The analyzer, built on first use: importing Presidio takes a second or two, so a worker that
        never redacts never pays it. Its first analysis is done here too (the e-mail recognizer's public
        suffix list loads then)."""
        with self._lock:
            if self._engine is None:
                from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, predefined_recognizers
                from presidio_analyzer.nlp_engine import NoOpNlpEngine

                recognizers = [getattr(predefined_recognizers, name)() for _, name in _PRESIDIO.values()]
                registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
                engine = AnalyzerEngine(
                    nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
                    registry=registry,
                    supported_languages=["en"],
                )
                engine.analyze(text="warm.up@example.com", language="en", entities=["EMAIL_ADDRESS"])
                self._engine = engine
            return self._engine


class LanguageDetector:
    """Azure AI Language PII detection (`language/:analyze-text`, kind `PiiEntityRecognition`)."""

    label = "azure_language"

    def __init__(self, *, endpoint: str, credential: AsyncTokenCredential, timeout_seconds: float) -> None:
        from azure.ai.textanalytics.aio import TextAnalyticsClient

        self._client = TextAnalyticsClient(
            endpoint,
            credential,
            retry_total=1,
            connection_timeout=min(timeout_seconds, 5.0),
            read_timeout=timeout_seconds,
        )
        self._timeout = timeout_seconds
        # Bearer tokens only ever travel over TLS, except to a local stand-in of the service (tests).
        self._options: dict[str, Any] = {} if endpoint.lower().startswith("https://") else {"enforce_https": False}
        self._calls = asyncio.Semaphore(_LANGUAGE_CONCURRENCY)

    async def close(self) -> None:
        await self._client.close()

    async def detect(self, texts: list[str], kinds: frozenset[EntityKind]) -> list[list[Finding]]:
        pieces = [(index, offset, piece) for index, text in enumerate(texts) for offset, piece in _pieces(text)]
        batches = [
            pieces[start : start + LANGUAGE_BATCH_DOCUMENTS]
            for start in range(0, len(pieces), LANGUAGE_BATCH_DOCUMENTS)
        ]
        categories = [_LANGUAGE_CATEGORIES[kind] for kind in sorted(kinds)]
        try:
            async with asyncio.timeout(self._timeout):
                answers = await asyncio.gather(*(self._call(batch, categories) for batch in batches))
        except TimeoutError:
            raise RedactionUnavailable("Azure AI Language did not answer in time.") from None
        by_category = {category: kind for kind, category in _LANGUAGE_CATEGORIES.items()}
        findings: list[list[Finding]] = [[] for _ in texts]
        for batch, results in zip(batches, answers, strict=True):
            for (index, offset, _), result in zip(batch, results, strict=True):
                if result.is_error:
                    raise RedactionUnavailable(f"Azure AI Language could not analyze a text ({result.error.code}).")
                for entity in result.entities:
                    kind = by_category.get(entity.category)
                    if kind in kinds:
                        start = offset + entity.offset
                        findings[index].append(Finding(start, start + entity.length, kind, entity.confidence_score))
        return findings

    async def _call(self, batch: list[tuple[int, int, str]], categories: list[str]) -> list[Any]:
        documents = [{"id": str(number), "text": piece, "language": "en"} for number, (_, _, piece) in enumerate(batch)]
        async with self._calls:
            try:
                return list(
                    await self._client.recognize_pii_entities(
                        documents, categories_filter=categories, disable_service_logs=True, **self._options
                    )
                )
            except AzureError as exc:
                raise RedactionUnavailable(f"Azure AI Language is unavailable ({type(exc).__name__}).") from exc


class CoveredDetector:
    """Azure AI Language, with the offline detector answering while it is unavailable (only built when the
    offline detector finds every kind asked for, so a fallback never lets a kind through)."""

    def __init__(self, primary: LanguageDetector, fallback: OfflineDetector) -> None:
        self.primary = primary
        self.fallback = fallback
        self.label = primary.label

    async def close(self) -> None:
        await self.primary.close()

    async def detect(self, texts: list[str], kinds: frozenset[EntityKind]) -> list[list[Finding]]:
        try:
            return await self.primary.detect(texts, kinds)
        except RedactionUnavailable as exc:
            log.warning("Redaction falls back to the offline detector: %s", exc.message)
            return await self.fallback.detect(texts, kinds)


def _pieces(text: str) -> Iterator[tuple[int, str]]:
    """The text in pieces Azure AI Language accepts, each with its offset; cut at whitespace where there is
    some, so a cut rarely falls inside a value."""
    start = 0
    while len(text) - start > LANGUAGE_DOCUMENT_CHARS:
        end = start + LANGUAGE_DOCUMENT_CHARS
        space = max(text.rfind(" ", start + LANGUAGE_DOCUMENT_CHARS // 2, end), text.rfind("\n", start, end))
        if space > start:
            end = space + 1
        yield start, text[start:end]
        start = end
    if start < len(text):
        yield start, text[start:]
