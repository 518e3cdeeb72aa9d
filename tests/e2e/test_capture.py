"""Capture through the real `openai` SDK, both clients, against the local host on Azurite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FAKE_MODEL, FakeUpstream, Reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


@pytest.fixture(params=["azure", "openai"])
def client(request: pytest.FixtureRequest, host: RunningHost) -> openai.OpenAI:
    return host.azure_client() if request.param == "azure" else host.openai_client()


def test_stored_create_is_retrievable_at_once(client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str) -> None:
    created = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"user": "admin", "tag": tag}, messages=MESSAGES
    )
    assert created.choices[0].message.content == "fake: hello there"
    assert created.id.startswith("chatcmpl-")

    kept = client.chat.completions.retrieve(created.id)
    assert kept.id == created.id
    assert kept.metadata == {"user": "admin", "tag": tag}
    assert kept.choices[0].message.content == "fake: hello there"
    assert kept.model == FAKE_MODEL
    assert kept.usage is not None and kept.usage.total_tokens == 10

    messages = client.chat.completions.messages.list(created.id)
    assert [(m.id, m.role, m.content) for m in messages] == [
        (f"{created.id}-0", "system", "Be brief."),
        (f"{created.id}-1", "user", "hello there"),
    ]


def test_store_and_metadata_are_not_forwarded_upstream(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    host.azure_client().chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES, temperature=0.2
    )
    forwarded = fake_upstream.requests[-1]["body"]
    assert "store" not in forwarded and "metadata" not in forwarded
    assert forwarded["temperature"] == 0.2
    assert forwarded["model"] == "gpt-4o"


def test_store_omitted_keeps_nothing(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    plain = client.chat.completions.create(model="gpt-4o", metadata={"tag": tag}, messages=MESSAGES)
    assert plain.choices[0].message.content == "fake: hello there"
    assert list(client.chat.completions.list(metadata={"tag": tag})) == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(plain.id)


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_create_is_relayed_chunk_by_chunk_and_stored(
    client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str, include_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(
        model="gpt-4o", store=True, stream=True, metadata={"tag": tag}, messages=MESSAGES, **options
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["fake:", " hello", " there"]
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[-1].usage is not None if include_usage else all(chunk.usage is None for chunk in chunks)

    kept = client.chat.completions.retrieve(chunks[0].id)
    assert kept.choices[0].message.content == "fake: hello there"
    assert kept.choices[0].finish_reason == "stop"
    assert (kept.usage is not None) == include_usage


def test_chunks_reach_the_client_before_the_upstream_finishes(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    """The upstream holds its stream after the first chunk until the client has received it:
    a proxy that buffered would never deliver it, and the test would fail on the timeout."""
    hold = threading.Event()
    fake_upstream.script(Reply(hold_after_first_chunk=hold))
    stream = host.openai_client(timeout=20).chat.completions.create(
        model="gpt-4o", store=True, stream=True, metadata={"tag": tag}, messages=MESSAGES
    )
    started = time.monotonic()
    first = next(iter(stream))
    assert time.monotonic() - started < 8
    assert first.choices[0].delta.role == "assistant"
    hold.set()
    rest = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "fake: hello there"


def test_streamed_tool_calls_are_assembled(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    fake_upstream.script(
        Reply(message={"role": "assistant", "content": None, "tool_calls": [call]}, finish_reason="tool_calls")
    )
    client = host.openai_client()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", store=True, stream=True, metadata={"tag": tag}, messages=MESSAGES
        )
    )
    kept = client.chat.completions.retrieve(chunks[0].id)
    assert kept.choices[0].finish_reason == "tool_calls"
    tool_call = kept.choices[0].message.tool_calls[0]
    assert (tool_call.id, tool_call.function.name, tool_call.function.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Oslo"}',
    )


def test_invalid_metadata_is_rejected_in_openai_shape(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    client = host.openai_client()
    too_many = {f"k{i}": "v" for i in range(17)}
    for metadata, fragment in [
        (too_many, "at most 16"),
        ({"k": "v" * 513}, "512"),
        ({"k" * 65: "v"}, "64"),
        ({"k": 1}, "strings"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o", store=True, metadata=metadata, messages=MESSAGES)  # type: ignore[arg-type]
        error = caught.value.body
        assert error["param"] == "metadata" and error["type"] == "invalid_request_error"
        assert fragment in error["message"]
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert fake_upstream.requests == []


def test_upstream_rate_limit_passes_through_with_retry_after(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    error = {
        "error": {"message": "Rate limit reached", "type": "rate_limit_error", "param": None, "code": "rate_limit"}
    }
    fake_upstream.script(Reply(status=429, body=error, headers={"retry-after": "7", "retry-after-ms": "7000"}))
    with pytest.raises(openai.RateLimitError) as caught:
        host.openai_client(max_retries=0).chat.completions.create(model="gpt-4o", store=True, messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.body == error["error"]
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["retry-after-ms"] == "7000"


def test_upstream_500_passes_through(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        Reply(status=500, body={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    )
    with pytest.raises(openai.InternalServerError) as caught:
        host.azure_client(max_retries=0).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 500 and caught.value.body["message"] == "boom"


def test_sdk_retry_after_upstream_500_stores_exactly_once(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    fake_upstream.script(
        Reply(
            status=500,
            body={"error": {"message": "transient", "type": "server_error", "param": None, "code": None}},
            headers={"retry-after-ms": "10"},
        )
    )
    client = host.openai_client(max_retries=2)
    created = client.chat.completions.create(model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES)
    assert len(fake_upstream.requests) == 2
    wait_listed(client, [created.id])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [created.id]


def test_idempotency_key_retry_replays_the_stored_answer(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    first = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES, extra_headers={"Idempotency-Key": tag}
    )
    again = client.chat.completions.with_raw_response.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES, extra_headers={"Idempotency-Key": tag}
    )
    assert again.parse().id == first.id
    assert again.headers["x-distillery-replayed"] == "true"
    assert len(fake_upstream.requests) == 1
    wait_listed(client, [first.id])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [first.id]


def test_streamed_retry_with_the_same_idempotency_key_replays_without_upstream(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    options = {"model": "gpt-4o", "store": True, "stream": True, "metadata": {"tag": tag}, "messages": MESSAGES}
    first = list(client.chat.completions.create(**options, extra_headers={"Idempotency-Key": tag}))
    again = list(client.chat.completions.create(**options, extra_headers={"Idempotency-Key": tag}))
    assert len(fake_upstream.requests) == 1
    assert {c.id for c in again} == {first[0].id}
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == "fake: hello there"
    wait_listed(client, [first[0].id])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [first[0].id]


def test_missing_or_wrong_key_is_401(host: RunningHost) -> None:
    for headers in ({}, {"api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        response = httpx.get(f"{host.url}/openai/v1/chat/completions", headers=headers)
        assert response.status_code == 401
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{host.url}/api/health").status_code == 200


def test_malformed_json_is_400(host: RunningHost) -> None:
    with host.http() as http:
        response = http.post(
            "/openai/deployments/gpt-4o/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert (
            http.post("/openai/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).json()[
                "error"
            ]["param"]
            == "model"
        )


@pytest.fixture(scope="module")
def storage_off_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("off"),
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_STORE_ENABLED="false",
    ) as running:
        yield running


def test_store_disabled_serves_and_says_so(
    storage_off_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = storage_off_host.openai_client()
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES
    )
    assert response.parse().choices[0].message.content == "fake: hello there"
    assert response.headers["x-distillery-stored"] == "false"
    assert response.headers["x-distillery-not-stored-reason"] == "store_disabled"
    assert list(client.chat.completions.list(metadata={"tag": tag})) == []


def test_storage_down_still_answers(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> None:
    from local_host.azurite import start_azurite

    emulator = start_azurite()
    with start_host(
        emulator.connection_string, tmp_path_factory.mktemp("down"), OPENAI_BASE_URL=upstream.base_url
    ) as running:
        emulator.stop()
        upstream.reset()
        client = running.openai_client(max_retries=0)
        response = client.chat.completions.with_raw_response.create(model="gpt-4o", store=True, messages=MESSAGES)
        assert response.parse().choices[0].message.content == "fake: hello there"
        assert response.headers["x-distillery-stored"] == "false"
        assert response.headers["x-distillery-not-stored-reason"] == "storage_unavailable"
        chunks = list(client.chat.completions.create(model="gpt-4o", store=True, stream=True, messages=MESSAGES))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fake: hello there"
        assert "not stored" in running.log()


def test_a_retry_after_delete_does_not_resurrect_the_old_id(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    """Right to be forgotten: the idempotency row must not bring a deleted completion back under its id."""
    client = host.openai_client()
    options = {"model": "gpt-4o", "store": True, "metadata": {"tag": tag}, "messages": MESSAGES}
    first = client.chat.completions.create(**options, extra_headers={"Idempotency-Key": tag})
    client.chat.completions.delete(first.id)

    again = client.chat.completions.create(**options, extra_headers={"Idempotency-Key": tag})
    replayed = client.chat.completions.create(**options, extra_headers={"Idempotency-Key": tag})

    assert again.id != first.id and replayed.id == again.id
    assert len(fake_upstream.requests) == 2
    wait_listed(client, [again.id])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [again.id]
