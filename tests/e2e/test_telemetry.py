"""Telemetry through the running local host with `TELEMETRY_EXPORTER=console`: the overhead header on
every proxied answer, one trace from the HTTP request through the queue into the job, and a host
output (logs and exported spans) that never holds a key or a message's content."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_host.azurite import Azurite
from shared.platform.access import Right
from tests.callers import service_keys
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream, Reply

UPSTREAM_KEY = f"sk-upstream-{secrets.token_hex(12)}"
SERVICE = {"reader": {Right.INFERENCE, Right.READ}}


@pytest.fixture(scope="module")
def keys() -> tuple[dict[str, str], str]:
    return service_keys(SERVICE)


@pytest.fixture(scope="module")
def telemetry_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, keys: tuple[dict[str, str], str]
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("telemetry-host"),
        OPENAI_BASE_URL=upstream.base_url,
        OPENAI_API_KEY=UPSTREAM_KEY,
        DISTILLERY_API_KEYS=keys[1],
        TELEMETRY_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="50",  # export spans promptly (standard OpenTelemetry setting)
        OTEL_METRIC_EXPORT_INTERVAL="200",
    ) as running:
        yield running


def exported(host: RunningHost) -> list[dict[str, Any]]:
    """The spans and metric batches the console exporter wrote, one JSON object a line."""
    items = []
    for line in host.log().splitlines():
        if line.startswith("{"):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return items


def wait_for_span(host: RunningHost, trace_id: str, name: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for item in exported(host):
            if item.get("name") == name and item.get("context", {}).get("trace_id") == f"0x{trace_id}":
                return item
        time.sleep(0.05)
    raise AssertionError(f"no span {name!r} in trace {trace_id}:\n{host.log()[-3000:]}")


def traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def test_every_proxied_answer_carries_its_overhead(telemetry_host: RunningHost, fake_upstream: FakeUpstream) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "store": True}
    with telemetry_host.http() as http:
        whole = http.post("/openai/v1/chat/completions", json=body)
        with http.stream("POST", "/openai/v1/chat/completions", json={**body, "stream": True}) as streamed:
            header = streamed.headers["x-distillery-overhead-ms"]  # before the first event is read
            events = list(streamed.iter_lines())
        fake_upstream.script(Reply(status=400, body={"error": {"message": "bad", "type": "invalid_request_error"}}))
        failed = http.post("/openai/v1/chat/completions", json=body)
    assert whole.status_code == 200 and float(whole.headers["x-distillery-overhead-ms"]) >= 0
    assert float(header) >= 0 and "data: [DONE]" in events
    assert failed.status_code == 400 and float(failed.headers["x-distillery-overhead-ms"]) >= 0


def test_one_trace_from_the_request_through_the_queue_into_the_job(telemetry_host: RunningHost, tag: str) -> None:
    trace_id, parent = traceparent()
    with telemetry_host.http() as http:
        stored = http.post(
            "/openai/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "store": True,
                "metadata": {"tag": tag},
                "messages": [{"role": "user", "content": "q"}],
            },
            headers={"traceparent": parent},
        )
        assert stored.status_code == 200
        wait_listed(telemetry_host.openai_client(), [stored.json()["id"]])  # the dataset selects it from the index
        created = http.post(
            "/api/datasets",
            json={"kind": "evaluation", "filter": {"metadata": {"tag": tag}}},
            headers={"traceparent": parent},
        )
        assert created.status_code == 202
    dataset_id = created.json()["id"]
    proxy = wait_for_span(telemetry_host, trace_id, "chat.completions proxy")
    assert proxy["attributes"]["distillery.completion_id"] == stored.json()["id"]
    wait_for_span(telemetry_host, trace_id, "upstream chat/completions")
    wait_for_span(telemetry_host, trace_id, "completion_store.put")
    chunk = wait_for_span(telemetry_host, trace_id, "dataset chunk")
    assert chunk["attributes"]["distillery.job.id"] == dataset_id
    assert chunk["attributes"]["distillery.job.items"] == 1
    process = wait_for_span(telemetry_host, trace_id, f"process {telemetry_host.env['DATASET_JOBS_QUEUE']}")
    assert chunk["parent_id"] == process["context"]["span_id"]


def test_metrics_are_exported(telemetry_host: RunningHost) -> None:
    with telemetry_host.http() as http:
        http.post("/openai/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = {
            metric["name"]
            for item in exported(telemetry_host)
            for resource in item.get("resource_metrics", [])
            for scope in resource["scope_metrics"]
            for metric in scope["metrics"]
        }
        if "distillery.proxy.overhead" in names:
            return
        time.sleep(0.05)
    raise AssertionError("the overhead histogram was never exported")


def test_keys_and_message_contents_never_reach_the_output(
    telemetry_host: RunningHost, keys: tuple[dict[str, str], str], tag: str, tmp_path: Path
) -> None:
    marker = f"MARKER-{secrets.token_hex(8)}"
    wrong_key = f"wrong-{secrets.token_hex(12)}"
    service_key = keys[0]["reader"]
    trace_id, parent = traceparent()
    message = {"role": "user", "content": f"please repeat {marker}"}
    with telemetry_host.http() as http, telemetry_host.http(key=service_key) as reader:
        answered = reader.post(
            "/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "store": True, "metadata": {"tag": tag}, "messages": [message]},
            headers={"traceparent": parent},
        )
        assert answered.status_code == 200 and marker in answered.text  # the fake upstream echoes it
        streamed = reader.post(
            "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
            json={"store": True, "stream": True, "messages": [message]},
        )
        assert marker in streamed.text
        refused = httpx.post(
            f"{telemetry_host.url}/openai/v1/chat/completions",
            json={"model": "m", "messages": [message]},
            headers={"api-key": wrong_key},
        )
        assert refused.status_code == 401
        malformed = http.post("/openai/v1/chat/completions", json={"model": "m", "messages": marker})
        assert malformed.status_code == 400
        # the list shows the capture once its index rows follow from the blob-created event
        wait_until(
            reader, f"/openai/v1/chat/completions?metadata[tag]={tag}", lambda listed: marker in json.dumps(listed)
        )
    wait_for_span(telemetry_host, trace_id, "completion_store.put")
    output = telemetry_host.log()
    assert "chat.completions proxy" in output  # spans are in the scanned output
    for secret in (marker, UPSTREAM_KEY, telemetry_host.key, service_key, wrong_key):
        assert secret not in output
