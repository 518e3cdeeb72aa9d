"""The permission report's self-test: a canary completion with known personal data is captured as
any capture is stored, and the stored document must not hold it; it leaves nothing behind."""

from __future__ import annotations

from shared.reports.permission_health import ProbeStatus
from tests.conftest import ServicesFactory
from tests.fake_language import FakeLanguage


async def test_the_canary_is_stored_without_its_personal_data(make_services: ServicesFactory) -> None:
    services = await make_services(REDACTION="pseudonymize", REDACTION_KEY="a-test-key-of-32-characters-long")
    report = await services.permission_checker.run()
    (canary,) = [probe for probe in report.probes if probe.name == "redaction:canary"]
    assert (canary.status, canary.operations) == (ProbeStatus.OK, ["capture", "read", "check"])
    assert [blob.name async for blob in services.completions_container.list_blobs()] == []


async def test_a_detector_outage_fails_the_canary_with_a_fix(
    make_services: ServicesFactory, language: FakeLanguage
) -> None:
    language.failing = True
    services = await make_services(
        REDACTION="mask",
        REDACTION_ENTITIES="EMAIL,PERSON",
        REDACTION_LANGUAGE_ENDPOINT=language.url,
        DISTILLERY_CREDENTIAL="managed_identity",
    )
    report = await services.permission_checker.run()
    (canary,) = [probe for probe in report.probes if probe.name == "redaction:canary"]
    assert (canary.status, canary.operations, canary.error_code) == (
        ProbeStatus.FAILED,
        ["capture"],
        "redaction_unavailable",
    )
    assert canary.fix is not None and "REDACTION_LANGUAGE_ENDPOINT" in canary.fix
    assert not report.healthy
    assert [blob.name async for blob in services.completions_container.list_blobs()] == []
