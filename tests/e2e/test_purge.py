"""Bulk purge end to end: dry-run count, queued purge run by the host's purge queue, receipt."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "forget me"}]


def _wait_for_status(host: RunningHost, purge_id: str, status: str, timeout: float = 30) -> dict[str, object]:
    with host.http() as http:
        return wait_until(http, f"/api/purges/{purge_id}", lambda job: job["status"] == status, timeout)


def test_purge_by_filter_forgets_every_match(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    doomed = [
        client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag, "user": "u1"}, messages=MESSAGES
        ).id
        for _ in range(3)
    ]
    kept = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag, "user": "u2"}, messages=MESSAGES
    ).id
    wait_listed(client, [*doomed, kept])
    selection = {"metadata": {"tag": tag, "user": "u1"}}

    with host.http() as http:
        dry = http.post("/api/purges", json={"filter": selection, "dry_run": True})
        assert dry.status_code == 202, dry.text  # counted on the queue, never inside the request
        assert dry.json()["dry_run"] is True and dry.json()["matched_count"] is None
        counted = _wait_for_status(host, dry.json()["id"], "succeeded")
        listed = list(client.chat.completions.list(metadata=selection["metadata"]))
        assert counted["matched_count"] == len(listed) == len(doomed) and counted["receipt"] is None

        queued = http.post("/api/purges", json={"filter": selection})
        assert queued.status_code == 202, queued.text
        purge_id = queued.json()["id"]
        assert queued.headers["location"] == f"/api/purges/{purge_id}"

    job = _wait_for_status(host, purge_id, "succeeded")
    assert job["receipt"]["deleted_count"] == len(doomed)
    for completion_id in doomed:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(completion_id)
    assert list(client.chat.completions.list(metadata=selection["metadata"])) == []
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [kept]


def test_an_empty_filter_is_refused(host: RunningHost) -> None:
    with host.http() as http:
        refused = http.post("/api/purges", json={"filter": {}})
        missing = http.get("/api/purges/purge_000000000000000000000000")
    assert refused.status_code == 400
    assert "all" in refused.json()["error"]["message"]
    assert missing.status_code == 404


def test_purge_by_kind_forgets_responses_only(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    responses = [client.responses.create(model="gpt-4o", input=f"r{n}", metadata={"tag": tag}).id for n in range(2)]
    chat = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": "c"}]
    ).id
    wait_listed(client, [*responses, chat])
    with host.http() as http:
        queued = http.post("/api/purges", json={"filter": {"metadata": {"tag": tag}, "kind": "response"}})
        assert queued.status_code == 202, queued.text
        _wait_for_status(host, queued.json()["id"], "succeeded")
        for response_id in responses:
            assert http.get(f"/openai/v1/responses/{response_id}").status_code == 404
        assert http.get(f"/openai/v1/chat/completions/{chat}").status_code == 200
