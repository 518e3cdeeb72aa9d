"""Telemetry in process: the SDK's in-memory exporter and metric reader see the spans and metrics the
app emits through the OpenTelemetry API, and the trace crosses the job queue into the job."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.capture.chat_request import parse_chat_request
from shared.capture.proxy import OVERHEAD_HEADER, ChatCapture
from shared.datasets.job import parse_dataset_params
from shared.erasure.purge import parse_purge_params
from shared.platform import telemetry
from shared.platform.access import Caller, Right
from shared.platform.credentials import build_sync_credential
from shared.platform.job_queue import read_local_message
from shared.platform.settings import Settings, TelemetryExporter
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream
from tests.shared.queues import local_queue
from tests.shared.seed import completion

CALLER = Caller(name="tester", owner="key:tester", rights=frozenset(Right))


class Telemetry:
    """The process's SDK, installed once (OpenTelemetry allows one provider per process)."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        telemetry.install([SimpleSpanProcessor(self.spans)], [self.reader])

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (found,) = self.finished(name)
        return found

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str, **attributes: Any) -> float:
        """A counter's sum, or a histogram's count, over the points with these attributes."""
        total = 0.0
        for point in self.points(name):
            if attributes.items() <= dict(point.attributes).items():
                total += getattr(point, "value", None) if hasattr(point, "value") else point.count
        return total


_installed: list[Telemetry] = []


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    if not _installed:
        _installed.append(Telemetry())
    installed = _installed[0]
    installed.spans.clear()
    yield installed


def chat(stream: bool = False, **extra: Any) -> Any:
    body = {"messages": [{"role": "user", "content": "hello"}], "store": True, **extra}
    if stream:
        body["stream"] = True
    return parse_chat_request(body)


async def capture(services: Services) -> ChatCapture:
    return services.capture


async def test_a_proxied_call_emits_proxy_upstream_and_store_spans_and_metrics(
    otel: Telemetry, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url)
    captured = otel.total("distillery.completions.captured")
    overheads = otel.total("distillery.proxy.overhead")

    reply = await services.capture.complete(chat(metadata={"k": "v"}), deployment="gpt-4o-mini", caller=CALLER)

    completion_id = json.loads(reply.body)["id"]
    assert float(reply.headers[OVERHEAD_HEADER]) >= 0
    proxy = otel.one("chat.completions proxy")
    assert proxy.attributes is not None
    assert proxy.attributes[telemetry.COMPLETION_ID] == completion_id
    assert proxy.attributes[telemetry.DEPLOYMENT] == "gpt-4o-mini"
    assert proxy.attributes[telemetry.STORED] == "true"
    assert proxy.attributes[telemetry.OVERHEAD_MS] == pytest.approx(float(reply.headers[OVERHEAD_HEADER]), abs=0.06)
    upstream = otel.one("upstream chat/completions")
    store = otel.one("completion_store.put")
    assert upstream.kind is trace.SpanKind.CLIENT and upstream.attributes == {
        telemetry.DEPLOYMENT: "gpt-4o-mini",
        telemetry.UPSTREAM: "openai-compatible",
        telemetry.HTTP_STATUS: 200,
    }
    assert store.attributes is not None and store.attributes[telemetry.COMPLETION_ID] == completion_id
    for child in (upstream, store):
        assert child.parent is not None and child.parent.span_id == proxy.context.span_id
        assert child.context.trace_id == proxy.context.trace_id
    assert otel.total("distillery.completions.captured") == captured + 1
    assert otel.total("distillery.proxy.overhead") == overheads + 1


async def test_a_streamed_call_reports_overhead_to_first_byte_and_ends_its_span_with_the_stream(
    otel: Telemetry, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url)
    reply = await services.capture.complete(chat(stream=True), deployment="gpt-4o-mini", caller=CALLER)
    assert float(reply.headers[OVERHEAD_HEADER]) >= 0
    assert otel.finished("chat.completions proxy") == []  # still streaming
    assert reply.events is not None
    events = [event async for event in reply.events]
    assert events[-1] == b"data: [DONE]\n\n"
    proxy = otel.one("chat.completions proxy")
    assert proxy.attributes is not None and proxy.attributes[telemetry.STREAMED] is True
    assert proxy.attributes[telemetry.STORED] == "true"
    store = otel.one("completion_store.put")
    assert store.parent is not None and store.parent.span_id == proxy.context.span_id
    assert otel.one("upstream chat/completions").parent.span_id == proxy.context.span_id  # type: ignore[union-attr]


async def test_not_stored_calls_are_counted_by_reason(
    otel: Telemetry, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, DISTILLERY_STORE_ENABLED="false")
    before = otel.total("distillery.completions.not_stored", reason="store_disabled")
    reply = await services.capture.complete(chat(), deployment="gpt-4o-mini", caller=CALLER)
    assert reply.headers["x-distillery-not-stored-reason"] == "store_disabled"
    assert otel.total("distillery.completions.not_stored", reason="store_disabled") == before + 1
    assert otel.one("chat.completions proxy").attributes[telemetry.NOT_STORED_REASON] == "store_disabled"  # type: ignore[index]


async def test_the_trace_crosses_the_queue_into_the_job(
    otel: Telemetry,
    make_services: ServicesFactory,
    functions: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tag: str,
) -> None:
    """The HTTP request's trace id reaches the queue trigger and the job chunk it runs."""
    services = await make_services()
    monkeypatch.setattr("shared.services._services", services)  # the trigger's get_services()
    durations = otel.total("distillery.job.duration", **{telemetry.JOB_TYPE: "dataset"})
    with telemetry.server_span("POST create_dataset", {}, {}) as request_span:
        params = parse_dataset_params({"kind": "evaluation", "filter": {"metadata": {"tag": tag}}})
        job = await services.dataset_jobs.submit(params)
    trace_id = request_span.get_span_context().trace_id

    body, properties = await receive(services)
    assert properties["traceparent"].split("-")[1] == f"{trace_id:032x}"
    message = ServiceBusMessage(
        body=body.encode(), message_id=job.id, delivery_count=1, application_properties=properties, user_properties={}
    )
    await functions["run_dataset_job"].get_user_function()(msg=message)

    send = otel.one(f"send {services.settings.dataset_jobs_queue}")
    delivery = otel.one(f"process {services.settings.dataset_jobs_queue}")
    chunk = otel.one("dataset chunk")
    assert send.kind is trace.SpanKind.PRODUCER and delivery.kind is trace.SpanKind.CONSUMER
    assert {send.context.trace_id, delivery.context.trace_id, chunk.context.trace_id} == {trace_id}
    assert delivery.parent is not None and delivery.parent.span_id == send.context.span_id
    assert chunk.parent is not None and chunk.parent.span_id == delivery.context.span_id
    assert chunk.attributes is not None
    assert (chunk.attributes[telemetry.JOB_ID], chunk.attributes[telemetry.JOB_TYPE]) == (job.id, "dataset")
    assert otel.total("distillery.job.duration", **{telemetry.JOB_TYPE: "dataset"}) == durations + 1


async def test_a_message_without_trace_context_starts_its_own_trace(otel: Telemetry) -> None:
    with telemetry.delivery_span("q", "m", {}) as span:
        assert span.get_span_context().is_valid
    assert otel.one("process q").parent is None
    assert read_local_message('{"version": 1}') == ('{"version": 1}', {})


async def receive(services: Services) -> tuple[str, dict[str, str]]:
    async with local_queue(services, services.settings.dataset_jobs_queue) as queue:
        (message,) = [message async for message in queue.receive_messages(max_messages=1)]
        await queue.delete_message(message)
        return read_local_message(message.content)


def test_the_exporter_defaults_to_azure_monitor_only_with_a_connection_string() -> None:
    storage = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    assert Settings(**storage).effective_telemetry_exporter is TelemetryExporter.OFF  # type: ignore[arg-type]
    connected = Settings(**storage, APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=x")  # type: ignore[arg-type]
    assert connected.effective_telemetry_exporter is TelemetryExporter.AZURE_MONITOR
    chosen = Settings(**storage, APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=x", TELEMETRY_EXPORTER="off")  # type: ignore[arg-type]
    assert chosen.effective_telemetry_exporter is TelemetryExporter.OFF
    with pytest.raises(ValueError, match="APPLICATIONINSIGHTS_CONNECTION_STRING"):
        Settings(**storage, TELEMETRY_EXPORTER="azure_monitor")  # type: ignore[arg-type]


async def test_logs_and_spans_carry_no_keys_or_contents(
    otel: Telemetry, make_services: ServicesFactory, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A call whose message holds a marker, through a keyed upstream, with storing failing: the logs
    explain what happened without the marker or the key."""
    marker, upstream_key = f"MARKER-{secrets.token_hex(8)}", f"sk-{secrets.token_hex(16)}"
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, OPENAI_API_KEY=upstream_key)
    await services.completions_container.delete_container()  # storing fails: storage_unavailable
    caplog.set_level(logging.DEBUG)
    request = parse_chat_request({"messages": [{"role": "user", "content": marker}], "store": True})
    reply = await services.capture.complete(request, deployment="gpt-4o-mini", caller=CALLER)
    assert reply.headers["x-distillery-not-stored-reason"] == "storage_unavailable"
    assert marker in reply.body.decode()  # the fake upstream echoes it: the answer has it, the logs must not
    assert "not stored" in caplog.text
    exported = json.dumps([json.loads(span.to_json()) for span in otel.spans.get_finished_spans()])
    for secret in (marker, upstream_key):
        assert secret not in caplog.text
        assert secret not in exported


async def test_log_content_logs_what_was_asked(
    make_services: ServicesFactory, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"MARKER-{secrets.token_hex(8)}"
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, LOG_CONTENT="true")
    caplog.set_level(logging.INFO)
    request = parse_chat_request({"messages": [{"role": "user", "content": marker}]})
    await services.capture.complete(request, deployment="gpt-4o-mini", caller=CALLER)
    assert marker in caplog.text


async def test_a_purge_chunk_reports_its_job_id_items_and_throughput(
    otel: Telemetry, make_services: ServicesFactory, tag: str
) -> None:
    services = await make_services()
    for item in [completion(metadata={"tag": tag}) for _ in range(3)]:
        await services.store.put(item)
    kind = {telemetry.JOB_TYPE: "purge"}
    items, throughput = otel.total("distillery.job.items", **kind), otel.total("distillery.job.throughput", **kind)
    job = await services.purges.submit(parse_purge_params({"filter": {"metadata": {"tag": tag}}}), requested_by="t")
    await services.purges.run(job.id)
    chunk = otel.one("purge chunk")
    assert chunk.attributes is not None
    assert (chunk.attributes[telemetry.JOB_ID], chunk.attributes[telemetry.JOB_ITEMS]) == (job.id, 3)
    assert otel.total("distillery.job.items", **kind) == items + 3
    assert otel.total("distillery.job.throughput", **kind) == throughput + 1


def test_application_insights_signs_in_as_the_apps_identity() -> None:
    storage = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    managed = Settings(**storage, DISTILLERY_CREDENTIAL="managed_identity", AZURE_CLIENT_ID="client-id")  # type: ignore[arg-type]
    assert isinstance(build_sync_credential(managed), ManagedIdentityCredential)
    assert isinstance(build_sync_credential(Settings(**storage)), DefaultAzureCredential)  # type: ignore[arg-type]
    assert telemetry.configure_telemetry(Settings(**storage)) == "off"  # type: ignore[arg-type]
