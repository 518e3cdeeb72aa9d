"""The stored-completions API through the SDK: list filters, paging, orders, update and delete."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FAKE_MODEL, FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


def _store(client: openai.OpenAI, count: int, **metadata: str) -> list[str]:
    """Store `count` completions and wait until lists show them (the index follows the answer)."""
    stored = [
        client.chat.completions.create(model="gpt-4o", store=True, metadata=dict(metadata), messages=MESSAGES).id
        for _ in range(count)
    ]
    wait_listed(client, stored)
    return stored


def test_list_filters_by_one_and_several_pairs(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.azure_client()
    docs = _store(client, 2, tag=tag, category="docs")
    chat = _store(client, 1, tag=tag, category="chat")
    _store(client, 1, tag=tag + "-other", category="docs")
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == docs + chat
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag, "category": "docs"})] == docs
    assert [c.id for c in client.chat.completions.list(metadata={"category": "chat", "tag": tag})] == chat
    assert list(client.chat.completions.list(metadata={"tag": tag, "category": "none"})) == []


def test_model_filter_matches_deployment_or_response_model(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    first = client.chat.completions.create(
        model="my-deployment", store=True, metadata={"tag": tag}, messages=MESSAGES
    ).id
    second = client.chat.completions.create(model="other", store=True, metadata={"tag": tag}, messages=MESSAGES).id
    wait_listed(client, [first, second])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model="my-deployment")] == [first]
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model=FAKE_MODEL)] == [first, second]
    assert [c.id for c in client.chat.completions.list(model="my-deployment") if c.metadata.get("tag") == tag] == [
        first
    ]


def test_orders_and_auto_paging(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    stored = _store(client, 5, tag=tag)
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, limit=2)] == stored
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, limit=2, order="desc")] == stored[::-1]
    page = client.chat.completions.list(metadata={"tag": tag}, limit=2, order="desc")
    assert [c.id for c in page.data] == stored[:2:-1][:2] and page.has_more
    with host.http() as http:
        body = http.get(
            "/openai/chat/completions", params={"metadata[tag]": tag, "limit": 2, "after": stored[1]}
        ).json()
    assert [c["id"] for c in body["data"]] == stored[2:4]
    assert (body["first_id"], body["last_id"], body["has_more"]) == (stored[2], stored[3], True)


def test_created_range(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.azure_client()
    early = _store(client, 1, tag=tag)
    boundary = int(time.time()) + 1
    while time.time() < boundary:
        time.sleep(0.05)
    late = _store(client, 1, tag=tag)
    with host.http() as http:

        def ids(**params: object) -> list[str]:
            response = http.get("/openai/v1/chat/completions", params={"metadata[tag]": tag, **params})
            assert response.status_code == 200, response.text
            return [c["id"] for c in response.json()["data"]]

        assert ids(created_before=boundary) == early
        assert ids(created_after=boundary) == late
        assert ids(created_after=boundary, order="desc") == late
        assert ids(created_after=boundary - 3600, created_before=boundary + 3600, order="desc") == late + early


def test_update_metadata_moves_it_between_filters(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    [completion_id] = _store(client, 1, tag=tag, stage="draft")
    updated = client.chat.completions.update(completion_id, metadata={"tag": tag, "stage": "final"})
    assert updated.metadata == {"tag": tag, "stage": "final"}
    assert client.chat.completions.retrieve(completion_id).metadata == {"tag": tag, "stage": "final"}
    assert list(client.chat.completions.list(metadata={"tag": tag, "stage": "draft"})) == []
    assert [c.id for c in client.chat.completions.list(metadata={"stage": "final", "tag": tag})] == [completion_id]


def test_update_accepts_only_metadata(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    [completion_id] = _store(client, 1, tag=tag)
    with host.http() as http:
        response = http.post(
            f"/openai/v1/chat/completions/{completion_id}", json={"metadata": {"a": "b"}, "model": "x"}
        )
        assert response.status_code == 400 and "model" in response.json()["error"]["message"]
        assert http.post(f"/openai/v1/chat/completions/{completion_id}", json={"metadata": {"a": 1}}).status_code == 400
    assert client.chat.completions.retrieve(completion_id).metadata == {"tag": tag}


def test_delete_then_404_everywhere(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.azure_client()
    keep, gone = _store(client, 2, tag=tag)
    deleted = client.chat.completions.delete(gone)
    assert (deleted.id, deleted.deleted, deleted.object) == (gone, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(gone)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(gone)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(gone)
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [keep]


def test_messages_paging_and_order(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    conversation = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    completion_id = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=conversation
    ).id
    assert [m.content for m in client.chat.completions.messages.list(completion_id, limit=2)] == [
        f"m{i}" for i in range(5)
    ]
    assert [m.content for m in client.chat.completions.messages.list(completion_id, order="desc")] == [
        f"m{i}" for i in range(4, -1, -1)
    ]
    page = client.chat.completions.messages.list(completion_id, limit=2, after=f"{completion_id}-1")
    assert [m.id for m in page.data] == [f"{completion_id}-2", f"{completion_id}-3"] and page.has_more


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"order": "up"}, "order"),
        ({"after": "../x"}, "after"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_list_parameters_are_400(host: RunningHost, params: dict[str, object], param: str) -> None:
    response = httpx.get(f"{host.url}/openai/v1/chat/completions", params=params, headers={"api-key": host.key})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("bad_id", ["nope", "chatcmpl-123", "..%2F..%2Fx", "chatcmpl-" + "0" * 500])
def test_unknown_or_malformed_ids_are_404(host: RunningHost, bad_id: str) -> None:
    with host.http() as http:
        for method in ("GET", "DELETE"):
            response = http.request(method, f"/openai/chat/completions/{bad_id}")
            assert response.status_code == 404, (method, bad_id, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"


def test_list_items_carry_the_deployment_and_a_bounded_preview(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    question = "Why  was my card\n declined? " + "x" * 500
    asked = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        [{"role": "user", "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}]}],
        [{"role": "system", "content": "Nobody asks anything."}],
    ]
    ids = [
        client.chat.completions.create(
            model="support-bot",
            store=True,
            metadata={"tag": tag},
            messages=messages,  # type: ignore[arg-type]
        ).id
        for messages in asked
    ]
    wait_listed(client, ids)
    listed = list(client.chat.completions.list(metadata={"tag": tag}))
    assert [c.id for c in listed] == ids and {c.model for c in listed} == {FAKE_MODEL}
    extras = [c.model_extra["distillery"] for c in listed if c.model_extra]
    assert [extra["deployment"] for extra in extras] == ["support-bot"] * 3
    previews = [extra["preview"] for extra in extras]
    assert previews[0] == ("Why was my card declined? " + "x" * 500)[:199] + "…" and len(previews[0]) == 200
    assert previews[1:] == ["Two parts", None]
    retrieved = client.chat.completions.retrieve(ids[0]).model_extra
    assert retrieved == {"distillery": {"deployment": "support-bot", "served_by": "support-bot"}}, "no preview"
