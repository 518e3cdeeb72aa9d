"""Redaction through the local host and the real `openai` SDK, streamed: the caller gets the answer as the
upstream gave it; the stored document, what the API serves back, the index and the host's log and
telemetry (console exporter) hold only placeholders."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest
from azure.storage.blob.aio import ContainerClient

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def redacting_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("redacting"),
        OPENAI_BASE_URL=upstream.base_url,
        REDACTION="pseudonymize",
        REDACTION_KEY="an-e2e-test-key-of-32-characters",
        REDACTION_METADATA="true",
        TELEMETRY_EXPORTER="console",
    ) as running:
        yield running


async def _documents(azurite: Azurite, container: str) -> list[bytes]:
    async with ContainerClient.from_connection_string(azurite.connection_string, container) as client:
        return [await (await client.download_blob(name)).readall() async for name in client.list_blob_names()]


def test_a_streamed_capture_keeps_only_placeholders(
    redacting_host: RunningHost, fake_upstream: FakeUpstream, azurite: Azurite, tag: str
) -> None:
    client = redacting_host.openai_client()
    stream = client.chat.completions.create(
        model="gpt-4o",
        store=True,
        stream=True,
        metadata={"customer": EMAIL, "tag": tag},
        messages=[{"role": "user", "content": f"Refund {EMAIL} on card {CARD}"}],
    )
    chunks = list(stream)
    said = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert said == f"fake: Refund {EMAIL} on card {CARD}"  # the caller's answer is untouched
    assert EMAIL in str(fake_upstream.requests[-1]["body"])  # and so is what the upstream got
    completion_id = chunks[0].id

    wait_listed(client, [completion_id])
    kept = client.chat.completions.retrieve(completion_id)
    placeholders = re.fullmatch(
        r"fake: Refund (\[EMAIL_[0-9a-f]{8}\]) on card (\[CREDIT_CARD_[0-9a-f]{8}\])",
        kept.choices[0].message.content or "",
    )
    assert placeholders is not None, kept.choices[0].message.content
    pseudonym, card = placeholders.groups()
    assert kept.metadata == {"customer": pseudonym, "tag": tag}
    (question,) = client.chat.completions.messages.list(completion_id)
    assert question.content == f"Refund {pseudonym} on card {card}"
    by_pseudonym = client.chat.completions.list(metadata={"customer": pseudonym, "tag": tag})
    assert [c.id for c in by_pseudonym] == [completion_id]
    assert list(client.chat.completions.list(metadata={"customer": EMAIL})) == []

    documents = asyncio.run(_documents(azurite, redacting_host.env["COMPLETIONS_CONTAINER"]))
    deadline = time.monotonic() + 30
    while completion_id not in (log := redacting_host.log()):  # the console exporter writes spans in batches
        assert time.monotonic() < deadline, "the capture's spans never reached the host's log"
        time.sleep(0.2)
    for secret in (EMAIL, CARD):
        assert all(secret.encode() not in document for document in documents)
        assert secret not in log
