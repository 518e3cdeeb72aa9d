"""Right to be forgotten end to end: a completion deleted through the `openai` SDK leaves the dataset
built from it (the host's dataset queue rebuilds it), and a finished purge keeps no metadata value."""

from __future__ import annotations

import hashlib

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream


def test_a_deleted_completion_leaves_its_dataset(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    created = [
        client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": f"secret {n}"}]
        ).id
        for n in range(3)
    ]
    wait_listed(client, created)
    with host.http() as http:
        started = http.post("/api/datasets", json={"kind": "evaluation", "filter": {"metadata": {"tag": tag}}})
        assert started.status_code == 202, started.text
        path = f"/api/datasets/{started.json()['id']}"
        first = wait_until(http, path, lambda body: body["status"] == "succeeded")
        assert b"secret 0" in http.get(f"{path}/files/eval.jsonl").content

        client.chat.completions.delete(created[0])

        rebuilt = wait_until(http, path, lambda body: body["rebuilds"] == 1 and body["status"] == "succeeded")
        data = http.get(f"{path}/files/eval.jsonl").content
    assert rebuilt["counts"]["written"] == first["counts"]["written"] - 1 == 2
    assert b"secret 0" not in data and b"secret 1" in data
    assert hashlib.sha256(data).hexdigest() == rebuilt["files"][0]["sha256"]


def test_a_finished_purge_keeps_no_metadata_value(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    forget = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"user": tag}, messages=[{"role": "user", "content": "forget me"}]
    )
    wait_listed(client, [forget.id])
    with host.http() as http:
        queued = http.post("/api/purges", json={"filter": {"metadata": {"user": tag}}})
        assert queued.status_code == 202, queued.text
        done = wait_until(http, f"/api/purges/{queued.json()['id']}", lambda body: body["status"] == "succeeded")
    assert done["receipt"]["deleted_count"] == 1
    assert done["filter"]["metadata"] == {"user": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}
    assert tag not in str(done) and "pending" not in done["progress"]
