"""Traces and metrics through the OpenTelemetry API; which SDK exporter (if any) is chosen once, at start-up.

Code everywhere uses the module's tracer and instruments. Until `configure_telemetry` installs an
SDK they are the API's no-ops, so telemetry off costs next to nothing. In Azure the Azure Monitor
distro (`azure-monitor-opentelemetry`) sends them to Application Insights with the app's managed
identity; locally `TELEMETRY_EXPORTER` picks `console` or `otlp`.

Trace context crosses the job queues as a W3C `traceparent` in the message's application properties,
so a job's spans share the trace of the HTTP request that queued it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import SpanProcessor

    from shared.platform.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "distillery"

tracer = trace.get_tracer(SERVICE_NAME)
meter = metrics.get_meter(SERVICE_NAME)

# Attribute names: OpenTelemetry semantic conventions where one exists, else `distillery.*`.
COMPLETION_ID = "distillery.completion_id"
DEPLOYMENT = "distillery.deployment"
STREAMED = "distillery.streamed"
STORED = "distillery.stored"
NOT_STORED_REASON = "distillery.not_stored_reason"
OVERHEAD_MS = "distillery.overhead_ms"
JOB_TYPE = "distillery.job.type"
JOB_ID = "distillery.job.id"
JOB_PART = "distillery.job.part"
JOB_ITEMS = "distillery.job.items"
UPSTREAM = "distillery.upstream"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"

captured_completions = meter.create_counter(
    "distillery.completions.captured", unit="{completion}", description="Chat completions stored by the proxy."
)
not_stored = meter.create_counter(
    "distillery.completions.not_stored",
    unit="{completion}",
    description="`store: true` calls served without keeping the answer, by `reason` (x-distillery-not-stored-reason).",
)
proxy_overhead = meter.create_histogram(
    "distillery.proxy.overhead",
    unit="ms",
    description="Time the proxy adds to a chat completion: request time minus upstream time (streams: to first byte).",
)
job_duration = meter.create_histogram(
    "distillery.job.duration", unit="s", description="Duration of one queue delivery (job chunk), by job type."
)
job_items = meter.create_counter(
    "distillery.job.items", unit="{item}", description="Items a job chunk processed (completions read, run items, ...)."
)
job_throughput = meter.create_histogram(
    "distillery.job.throughput", unit="{item}/s", description="Items per second of one job chunk, by job type."
)


class _QuotaGauge:
    """The latest storage-quota percentage, reported by an observable gauge (unknown until measured)."""

    percent: float | None = None

    def observe(self, _options: CallbackOptions) -> Iterator[Observation]:
        if self.percent is not None:
            yield Observation(self.percent)


quota_gauge = _QuotaGauge()
meter.create_observable_gauge(
    "distillery.storage.quota_used",
    callbacks=[quota_gauge.observe],
    unit="%",
    description="Share of STORAGE_QUOTA_BYTES in use, from the last quota measurement of this worker.",
)


def record_quota_percent(percent: float) -> None:
    quota_gauge.percent = percent


ALIAS = "distillery.alias"
online_graded = meter.create_counter(
    "distillery.alias.online_graded",
    unit="{completion}",
    description="An alias's sampled live calls graded online, by serving `distillery.deployment` and `outcome`.",
)


class _OnlinePassRates:
    """The latest online pass rate (alert window) per alias and serving deployment this worker computed."""

    def __init__(self) -> None:
        self.rates: dict[tuple[str, str], float] = {}

    def observe(self, _options: CallbackOptions) -> Iterator[Observation]:
        for (alias, deployment), rate in list(self.rates.items()):
            yield Observation(rate, {ALIAS: alias, DEPLOYMENT: deployment})


online_pass_rates = _OnlinePassRates()
meter.create_observable_gauge(
    "distillery.alias.online_pass_rate",
    callbacks=[online_pass_rates.observe],
    unit="1",
    description="Pass rate of an alias's online-graded calls over its alert window, by serving deployment.",
)


def elapsed_ms(since: float) -> float:
    """Milliseconds since a `time.perf_counter()` reading."""
    return (time.perf_counter() - since) * 1000


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
) -> Iterator[Span]:
    """A current span that records a failure by its type only (`error.type`): an exception's message
    may quote what a caller sent, and telemetry never carries contents."""
    with tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            mark_failed(current, exc)
            raise


def mark_failed(target: Span, exc: BaseException) -> None:
    target.set_attribute(ERROR_TYPE, type(exc).__name__)
    target.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def server_span(name: str, attributes: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
    """The span of one HTTP request, continuing the trace its `traceparent` header names, if any."""
    return span(name, attributes, kind=SpanKind.SERVER, context=propagate.extract(headers))


# Trace context across queues.


def inject_trace_context(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current trace context (`traceparent`, `tracestate`) to a message's properties."""
    propagate.inject(carrier)
    return carrier


def extract_trace_context(properties: Mapping[str, Any] | None) -> Context:
    """The trace context a message carries (an empty context when it carries none)."""
    carrier = {str(key): _text(value) for key, value in (properties or {}).items()}
    return propagate.extract(carrier)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@contextmanager
def enqueue_span(system: str, queue_name: str, message_id: str) -> Iterator[dict[str, str]]:
    """A producer span around one send; yields the properties (trace context) to send with the message."""
    attributes = {MESSAGING_SYSTEM: system, MESSAGING_DESTINATION: queue_name, MESSAGING_MESSAGE_ID: message_id}
    with span(f"send {queue_name}", attributes, kind=SpanKind.PRODUCER):
        yield dict(inject_trace_context({}))


@contextmanager
def delivery_span(queue_name: str, message_id: str | None, properties: Mapping[str, Any] | None) -> Iterator[Span]:
    """A consumer span for one queue delivery, continuing the trace of whoever sent the message."""
    attributes = {MESSAGING_SYSTEM: "servicebus", MESSAGING_DESTINATION: queue_name}
    if message_id:
        attributes[MESSAGING_MESSAGE_ID] = message_id
    context = extract_trace_context(properties)
    with span(f"process {queue_name}", attributes, context=context, kind=SpanKind.CONSUMER) as current:
        yield current


@dataclass
class JobChunk:
    """What one job chunk reports: items it processed (throughput) and attributes known only later."""

    span: Span
    items: int = 0


@contextmanager
def job_chunk(job_type: str, job_id: str, *, part: int | None = None) -> Iterator[JobChunk]:
    """A span and duration/throughput metrics for one delivery's work on a job."""
    attributes: dict[str, Any] = {JOB_TYPE: job_type, JOB_ID: job_id}
    if part is not None:
        attributes[JOB_PART] = part
    started = time.perf_counter()
    with span(f"{job_type} chunk", attributes) as current:
        chunk = JobChunk(current)
        try:
            yield chunk
        finally:
            seconds = time.perf_counter() - started
            current.set_attribute(JOB_ITEMS, chunk.items)
            kind = {JOB_TYPE: job_type}
            job_duration.record(seconds, kind)
            if chunk.items:
                job_items.add(chunk.items, kind)
                job_throughput.record(chunk.items / max(seconds, 1e-6), kind)


# Set-up.


def configure_telemetry(settings: Settings) -> str:
    """Install the SDK and exporter the settings choose, once per process; returns the exporter's name."""
    from shared.platform.settings import TelemetryExporter

    exporter = settings.effective_telemetry_exporter
    if exporter is TelemetryExporter.OFF or _configured:
        return exporter.value
    if exporter is TelemetryExporter.AZURE_MONITOR:
        _configure_azure_monitor(settings)
    elif exporter is TelemetryExporter.CONSOLE:
        _configure_console()
    else:
        _configure_otlp()
    log.info("Telemetry exported to %s", exporter.value)
    return exporter.value


_configured = False


def install(span_processors: Sequence[SpanProcessor], metric_readers: Sequence[MetricReader]) -> None:
    """Set the process's tracer and meter providers (OpenTelemetry allows this once per process)."""
    global _configured
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({"service.name": SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=list(metric_readers)))
    _configured = True


def _configure_azure_monitor(settings: Settings) -> None:
    global _configured
    from azure.monitor.opentelemetry import configure_azure_monitor

    from shared.platform.credentials import build_sync_credential

    assert settings.applicationinsights_connection_string is not None
    configure_azure_monitor(
        connection_string=settings.applicationinsights_connection_string.get_secret_value(),
        credential=build_sync_credential(settings),
        # The Functions host already sends the worker's logs to Application Insights (as traces).
        disable_logging=True,
        resource=_resource(),
    )
    _configured = True


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": SERVICE_NAME})


def _configure_console() -> None:
    """Spans and metrics as one JSON object a line on stdout (`make run`'s terminal, a host's log)."""
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    spans = ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    metric_lines = ConsoleMetricExporter(out=sys.stdout, formatter=lambda data: data.to_json(indent=None) + "\n")
    install([BatchSpanProcessor(spans)], [PeriodicExportingMetricReader(metric_lines)])


def _configure_otlp() -> None:
    """OTLP over HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` (default http://localhost:4318), e.g. a local collector or Aspire dashboard."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    install([BatchSpanProcessor(OTLPSpanExporter())], [PeriodicExportingMetricReader(OTLPMetricExporter())])
