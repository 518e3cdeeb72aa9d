"""Datasets end to end: completions captured through the `openai` SDK, turned into both kinds of
dataset by the host's queue worker, downloaded and checked; and a poison message dead-lettered."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from azure.storage.queue import QueueClient

from local_host.azurite import Azurite
from shared.datasets.check import check_lines
from shared.datasets.job import new_dataset_id
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream, Reply

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}


@pytest.fixture(scope="module")
def datasets_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("datasets-host"),
        OPENAI_BASE_URL=upstream.base_url,
        LOCAL_MAX_DELIVERY_COUNT="2",
        DATASET_MAX_DELIVERY_COUNT="2",
        LOCAL_RETRY_SECONDS="0",
    ) as running:
        yield running


def wait_for(http: httpx.Client, dataset_id: str, *statuses: str, seconds: float = 60) -> dict[str, Any]:
    # A record queued straight to the queue appears when its message runs.
    return wait_until(http, f"/api/datasets/{dataset_id}", lambda body: body.get("status") in statuses, seconds)


def test_sdk_completions_become_both_kinds_of_dataset(
    datasets_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = datasets_host.openai_client()
    created = [
        client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": f"question {n}"}]
        ).id
        for n in range(11)
    ]
    fake_upstream.script(Reply(message={"role": "assistant", "content": None, "tool_calls": [CALL]}))
    multi_turn = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Which unit?"},
        {"role": "user", "content": "Celsius, then Oslo."},
    ]
    created.append(
        client.chat.completions.create(
            model="gpt-4o",
            store=True,
            metadata={"tag": tag},
            messages=multi_turn,
            tools=TOOLS,  # type: ignore[arg-type]
        ).id
    )
    other = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag + "-other"}, messages=[{"role": "user", "content": "no"}]
    )
    wait_listed(client, [*created, other.id])

    with datasets_host.http() as http:
        started = http.post(
            "/api/datasets",
            json={
                "kind": "distillation",
                "filter": {"metadata": {"tag": tag}},
                "validation_fraction": 0.25,
                "name": "docs",
            },
        )
        assert started.status_code == 202, started.text
        assert started.json()["status"] == "queued" and started.json()["object"] == "dataset"
        evaluation = http.post("/api/datasets", json={"kind": "evaluation", "filter": {"metadata": {"tag": tag}}})
        assert evaluation.status_code == 202, evaluation.text

        distilled = wait_for(http, started.json()["id"], "succeeded", "failed")
        assert distilled["status"] == "succeeded", distilled["error"]
        assert distilled["counts"] == {"selected": 12, "written": 12, "skipped": {}}
        examples = []
        for file in distilled["files"]:
            data = download(http, distilled["id"], file["name"])
            assert hashlib.sha256(data).hexdigest() == file["sha256"] and len(data) == file["bytes"]
            assert list(check_lines(data.splitlines())) == []
            examples += [json.loads(line) for line in data.splitlines()]
        manifest = json.loads(download(http, distilled["id"], "manifest.json"))
        assert manifest["files"] == distilled["files"]
        assert len(examples) == 12
        with_tools = [e for e in examples if "tools" in e]
        assert len(with_tools) == 1 and with_tools[0]["tools"] == TOOLS
        assert with_tools[0]["messages"] == [*multi_turn, {"role": "assistant", "tool_calls": [CALL]}]

        evaluated = wait_for(http, evaluation.json()["id"], "succeeded", "failed")
        assert [file["name"] for file in evaluated["files"]] == ["eval.jsonl"]
        rows = [json.loads(line) for line in download(http, evaluated["id"], "eval.jsonl").splitlines()]
        assert [row["item"]["completion_id"] for row in rows] == created
        assert rows[0]["item"]["reference"] == rows[0]["sample"]["output_text"] == "fake: question 0"

        listed = http.get("/api/datasets", params={"limit": 2}).json()
        assert [d["id"] for d in listed["data"]] == [evaluated["id"], distilled["id"]]
        assert listed["object"] == "list" and listed["first_id"] == evaluated["id"]
        deleted = http.delete(f"/api/datasets/{distilled['id']}")
        assert deleted.json() == {"id": distilled["id"], "object": "dataset.deleted", "deleted": True}
        assert http.get(f"/api/datasets/{distilled['id']}").status_code == 404
        assert http.get(f"/api/datasets/{distilled['id']}/files/train.jsonl").status_code == 404


def test_too_few_completions_fail_with_a_count(
    datasets_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = datasets_host.azure_client()
    created = [
        client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": "hi"}]
        ).id
        for _ in range(3)
    ]
    wait_listed(client, created)
    with datasets_host.http() as http:
        started = http.post("/api/datasets", json={"kind": "distillation", "filter": {"metadata": {"tag": tag}}})
        failed = wait_for(http, started.json()["id"], "succeeded", "failed")
    assert failed["status"] == "failed" and failed["files"] == []
    assert failed["error"]["code"] == "too_few_examples"
    assert "Only 1 usable completion(s) found (3 selected; skipped: 2 duplicate)" in failed["error"]["message"]


def test_poison_message_fails_the_job_and_dead_letters(datasets_host: RunningHost) -> None:
    job_id = new_dataset_id()
    queue_name = datasets_host.env["DATASET_JOBS_QUEUE"]
    connection = datasets_host.env["AzureWebJobsStorage"]
    QueueClient.from_connection_string(connection, queue_name).send_message(
        json.dumps({"version": 1, "job_id": job_id, "request": {"kind": "distillation", "filter": {}}})
    )
    with datasets_host.http() as http:
        failed = wait_for(http, job_id, "failed")
    assert failed["error"]["code"] == "invalid_message"
    assert "filter" in failed["error"]["message"]
    deadletter = QueueClient.from_connection_string(connection, f"{queue_name}-deadletter")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = list(deadletter.peek_messages(max_messages=32))
        if any(job_id in (m.content or "") for m in messages):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the poison message was not dead-lettered")
    letter = next(json.loads(m.content) for m in messages if job_id in m.content)
    assert letter["dead_letter_reason"] == "MaxDeliveryCountExceeded" and letter["delivery_count"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "distillation", "filter": {"metadata": {"a": "b"}}, "extra": 1}, "extra"),
        ({"kind": "distillation", "filter": {}}, "filter"),
        (
            {"kind": "distillation", "filter": {"metadata": {"a": "b"}}, "validation_fraction": 0.6},
            "validation_fraction",
        ),
        ({"kind": "distillation", "ids": ["chatcmpl-nope"]}, "ids"),
        ({"kind": "evaluation", "filter": {"model": "m"}, "group_by": "user"}, None),
        ({"kind": "summary", "filter": {"model": "m"}}, "kind"),
        ({"kind": "distillation", "filter": {"model": "m", "owner": "x"}}, "filter"),
        ({"kind": "distillation"}, None),
    ],
)
def test_bad_requests_get_openai_shaped_400s(
    datasets_host: RunningHost, body: dict[str, Any], param: str | None
) -> None:
    with datasets_host.http() as http:
        response = http.post("/api/datasets", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_rights_and_unknown_ids(datasets_host: RunningHost) -> None:
    with datasets_host.http(key="wrong") as http:
        assert http.get("/api/datasets").status_code == 401
        assert http.post("/api/datasets", json={}).status_code == 401
    with datasets_host.http() as http:
        assert http.get("/api/datasets/nonsense").status_code == 404
        assert http.get(f"/api/datasets/{new_dataset_id()}").status_code == 404
        assert http.get("/api/datasets", params={"after": "x"}).status_code == 400
        assert http.get("/api/datasets", params={"limit": 0}).status_code == 400


def download(http: httpx.Client, dataset_id: str, name: str) -> bytes:
    response = http.get(f"/api/datasets/{dataset_id}/files/{name}")
    assert response.status_code == 200, response.text
    return response.content
