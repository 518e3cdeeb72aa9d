"""Quota enforcement through a host started with a tiny cap, driven by the `openai` SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def tiny_host(
    request: pytest.FixtureRequest, azurite: Azurite, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path,
        OPENAI_BASE_URL=upstream.base_url,
        STORAGE_QUOTA_BYTES="2000",
        **request.param,
    ) as running:
        yield running


@pytest.mark.parametrize("tiny_host", [{}], indirect=True)
def test_at_the_cap_requests_are_served_but_not_stored(
    tiny_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = tiny_host.openai_client()
    stored: list[str] = []
    for _ in range(10):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES
        )
        if raw.headers["x-distillery-stored"] == "false":
            break
        stored.append(raw.parse().id)
        wait_listed(client, stored[-1:])  # counted once indexed: the cap is checked against what is counted
    else:
        pytest.fail("storing never stopped under a 2000-byte cap")
    assert raw.headers["x-distillery-not-stored-reason"] == "quota_exceeded"
    assert raw.parse().choices[0].message.content == "fake: hi"
    assert stored and [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == stored
    assert "Storage quota reached" in tiny_host.log()

    with tiny_host.http() as http:
        first = http.get("/api/quota")
        assert first.status_code == 202, first.text  # never built inside the request: queued
        assert first.json()["object"] == "report.pending" and int(first.headers["retry-after"]) > 0
        assert http.get("/api/quota").json()["requested_at"] == first.json()["requested_at"]  # queued once
        ready = wait_for_report(tiny_host, "/api/quota")
        report = ready.json()
    assert int(ready.headers["age"]) == report["age_seconds"] >= 0
    assert report["cap_bytes"] == 2000 and report["level"] == "exceeded" and report["percent_used"] >= 100
    assert report["completion_count"] == len(stored)
    with tiny_host.http() as http:
        assert http.get("/api/health/permissions").status_code == 202
    assert wait_for_report(tiny_host, "/api/health/permissions").json()["object"] == "permission.report"


@pytest.mark.parametrize("tiny_host", [{"STORAGE_QUOTA_MODE": "reject"}], indirect=True)
def test_reject_mode_answers_429_before_calling_upstream(
    tiny_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = tiny_host.azure_client()
    while True:
        try:
            kept = client.chat.completions.create(model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES)
            wait_listed(client, [kept.id])
        except openai.RateLimitError as refused:
            error, headers = refused.body, refused.response.headers
            break
        assert len(fake_upstream.requests) < 10, "storing never stopped under a 2000-byte cap"
    calls = len(fake_upstream.requests)
    assert isinstance(error, dict) and error["code"] == "storage_quota_exceeded" and error["param"] == "store"
    assert "STORAGE_QUOTA_BYTES" in error["message"]
    assert headers["x-should-retry"] == "false"
    unstored = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert unstored.choices[0].message.content == "fake: hi"
    assert len(fake_upstream.requests) == calls + 1


def wait_for_report(host: RunningHost, route: str, timeout: float = 60) -> httpx.Response:
    """Poll a report route until the report exists (the first call queues it)."""
    deadline = time.monotonic() + timeout
    with host.http() as http:
        while time.monotonic() < deadline:
            answer = http.get(route)
            if answer.status_code == 200:
                return answer
            assert answer.status_code == 202, answer.text
            time.sleep(0.1)
    raise AssertionError(f"{route} never became ready\n{host.log()[-3000:]}")


def test_timers_run_now_through_the_admin_api(host: RunningHost) -> None:
    before = wait_for_report(host, "/api/quota").json()["generated_at"]
    with host.http() as http:
        listed = {f["name"]: f for f in http.get("/admin/functions").json()}
        assert http.post("/admin/functions/quota_report", json={"input": ""}).status_code == 202
        after = http.get("/api/quota").json()
        assert http.post("/admin/functions/permission_report", json={"input": ""}).status_code == 202
        permissions = http.get("/api/health/permissions").json()
    assert listed["quota_report"]["schedule"] == "%QUOTA_REPORT_SCHEDULE%"
    assert {"permission_report", "retention_sweep", "purge_job"} <= set(listed)
    assert after["generated_at"] > before and after["cap_bytes"] == 10 * 1024**3
    probes = {probe["name"]: probe["status"] for probe in permissions["probes"]}
    assert probes[f"table:{host.env['COMPLETION_INDEX_TABLE']}"] == "ok"
    assert probes[f"queue:{host.env['PURGE_JOBS_QUEUE']}"] == "ok"
    assert permissions["readers"] == permissions["actors"] == ["default"]
