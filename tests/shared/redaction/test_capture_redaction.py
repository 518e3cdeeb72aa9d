"""Redaction on the capture path, in process with the app's services on Azurite: the caller and the
upstream see the original, while the blob, the index rows and the logs never hold it (streamed
answers included); a detector outage serves the answer and stores nothing."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from shared.capture.chat_request import parse_chat_request
from shared.capture.proxy import NOT_STORED_REASON_HEADER, STORED_HEADER, ProxyReply
from shared.capture.responses_request import parse_responses_request
from shared.platform.access import Caller, Right
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.fake_language import FakeLanguage
from tests.fakes import FakeUpstream, Reply

CALLER = Caller(name="tester", owner="key:tester", rights=frozenset(Right))
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
IP = "203.0.113.42"
SECRETS = (EMAIL, CARD, IP, "jane.doe")
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"who": EMAIL})}}
    ],
}


def body(stream: bool) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "store": True,
        "stream": stream,
        "metadata": {"customer": EMAIL},
        "messages": [
            {"role": "user", "content": f"Who is {EMAIL}? Card {CARD}."},
            TOOL_CALL,
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"last_ip": IP})},
            {"role": "user", "content": f"Write to {EMAIL}"},
        ],
    }


async def complete(services: Services, stream: bool) -> tuple[ProxyReply, bytes]:
    reply = await services.capture.complete(parse_chat_request(body(stream)), deployment="gpt-4o-mini", caller=CALLER)
    if reply.events is None:
        return reply, reply.body
    return reply, b"".join([event async for event in reply.events])


async def kept_bytes(services: Services) -> list[bytes]:
    container = services.completions_container
    return [await (await container.download_blob(name)).readall() async for name in container.list_blob_names()]


@pytest.mark.parametrize("stream", [False, True])
async def test_nothing_unredacted_reaches_the_blob_the_index_or_the_logs(
    make_services: ServicesFactory, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    services = await make_services(
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDACTION="pseudonymize",
        REDACTION_KEY="a-test-key-of-32-characters-long",
        REDACTION_METADATA="true",
    )
    fake_upstream.script(Reply(message={**TOOL_CALL, "content": f"Asking about {EMAIL}"}, finish_reason="tool_calls"))
    reply, answer = await complete(services, stream)

    assert reply.headers[STORED_HEADER] == ("pending" if stream else "true")
    assert b": distillery-stored=false" not in answer
    assert EMAIL in answer.decode()  # the caller gets the answer as the upstream gave it...
    forwarded = json.dumps(fake_upstream.requests[-1]["body"])
    assert EMAIL in forwarded and CARD in forwarded  # ...and the upstream the request as sent

    (document,) = await kept_bytes(services)
    kept = json.loads(document)
    for secret in SECRETS:
        assert secret not in document.decode()
    assert kept["request"]["messages"][0]["content"].startswith("Who is [EMAIL_")
    assert kept["response"]["choices"][0]["message"]["content"].startswith("Asking about [EMAIL_")
    arguments = kept["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments)["who"].startswith("[EMAIL_")
    assert kept["metadata"]["customer"] == json.loads(arguments)["who"]  # one pseudonym per person

    assert await services.indexer.index([kept["id"]]) == 1
    rows = [row async for row in services.index_table.list_entities()]
    assert rows
    for secret in SECRETS:
        assert secret not in json.dumps(rows, default=str)
        assert secret not in caplog.text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_detector_outage_serves_the_answer_and_stores_nothing(
    make_services: ServicesFactory, fake_upstream: FakeUpstream, language: FakeLanguage, stream: bool
) -> None:
    language.failing = True
    services = await make_services(
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDACTION="mask",
        REDACTION_ENTITIES="EMAIL,PERSON",  # the offline detector cannot cover PERSON
        REDACTION_LANGUAGE_ENDPOINT=language.url,
        DISTILLERY_CREDENTIAL="managed_identity",
    )
    reply, answer = await complete(services, stream)

    assert EMAIL in answer.decode()  # served as the upstream answered
    if stream:
        assert b": distillery-stored=false reason=redaction_unavailable" in answer
        assert answer.endswith(b"data: [DONE]\n\n")
    else:
        assert (reply.headers[STORED_HEADER], reply.headers[NOT_STORED_REASON_HEADER]) == (
            "false",
            "redaction_unavailable",
        )
    assert language.requests  # the detector was asked, and failed
    assert await kept_bytes(services) == []


async def test_metadata_set_after_capture_is_redacted_too(
    make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, REDACTION="mask", REDACTION_METADATA="true")
    _, answer = await complete(services, stream=False)
    completion_id = json.loads(answer)["id"]
    await services.indexer.index([completion_id])

    updated = await services.store.update_metadata(completion_id, {"customer": "john@example.org", "tier": "gold"})
    assert updated.metadata == {"customer": "[EMAIL]", "tier": "gold"}
    (document,) = await kept_bytes(services)
    rows = [row async for row in services.index_table.list_entities()]
    assert b"john@example.org" not in document and "john@example.org" not in json.dumps(rows, default=str)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_response_and_its_chain_are_kept_redacted(
    make_services: ServicesFactory, fake_upstream: FakeUpstream, stream: bool
) -> None:
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, REDACTION="mask", REDACTION_METADATA="true")
    asked = {
        "model": "gpt-4o-mini",
        "input": f"Mail {EMAIL}",
        "instructions": f"Card {CARD}",
        "metadata": {"customer": EMAIL},
        "stream": stream,
    }
    first = await services.capture.complete(parse_responses_request(asked), deployment="gpt-4o-mini", caller=CALLER)
    body = first.body if first.events is None else b"".join([event async for event in first.events])
    assert EMAIL in body.decode()  # the caller gets the answer as the upstream gave it
    if stream:
        events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
        first_id = events[-1]["response"]["id"]
    else:
        first_id = json.loads(body)["id"]
    chained = {"model": "gpt-4o-mini", "input": "and?", "previous_response_id": first_id}
    await services.capture.complete(parse_responses_request(chained), deployment="gpt-4o-mini", caller=CALLER)

    documents = await kept_bytes(services)
    assert len(documents) == 2
    for document in documents:
        for secret in (EMAIL, CARD):
            assert secret not in document.decode()
    second = next(json.loads(d) for d in documents if json.loads(d)["id"] != first_id)
    assert second["history"][0]["content"][0]["text"] == "Mail [EMAIL]"  # the chain, kept redacted too
