"""Permission health: can the app's own identity still do each thing it must, and who may read or act
on stored completions?

Every probe does the real operation with the app's real clients (write, read and delete a probe blob;
write, query and delete a probe row; send to each job queue without triggering a job; get an Entra
token and call the upstream with `max_tokens: 1`) and reports the exact error and a fix hint.

A queue send is proven without delivering anything: on Service Bus a message is *scheduled* a day
ahead and the schedule cancelled at once (the Data Sender role the queues grant covers both); on the local storage
queue a message is sent invisible for an hour and deleted by its receipt. No handler ever sees one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol

import httpx
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
)
from azure.data.tables.aio import TableClient
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
)
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueServiceClient
from pydantic import BaseModel

from shared.platform.access import Identity, Right
from shared.platform.errors import DistilleryError, RedactionUnavailable
from shared.platform.settings import EntityKind
from shared.redaction.redactor import CANARY
from shared.reports.report_store import ReportStore
from shared.store import ids
from shared.store.completion_store import CompletionStore
from shared.store.stored_completion import StoredCompletion
from shared.upstream.client import Upstream

log = logging.getLogger(__name__)

LATEST = "permissions/latest.json"
_PROBE_BODY = '{"type": "probe"}'
_MANAGED_IDENTITY = "the function app's managed identity (AZURE_CLIENT_ID), or locally your signed-in account"

Kind = Literal["blob_container", "table", "queue", "upstream_token", "upstream_call", "redaction"]


class ProbeStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class ProbeResult(BaseModel):
    name: str
    kind: Kind
    resource: str
    operations: list[str]
    """The operations tried, in order; the last one is where a failure happened."""
    status: ProbeStatus
    error_code: str | None = None
    error: str | None = None
    """The storage, Service Bus or upstream error, first line only."""
    fix: str | None = None
    """What to change so the probe passes (or why it was skipped)."""
    elapsed_ms: float


class PermissionReport(BaseModel):
    object: Literal["permission.report"] = "permission.report"
    generated_at: datetime
    healthy: bool
    """Every probe passed or was skipped."""
    probes: list[ProbeResult]
    identities: list[Identity]
    """Configured caller identities and their rights."""
    readers: list[str]
    """Identities holding `stored-completions/read`."""
    actors: list[str]
    """Identities holding `stored-completions/action`."""


@dataclass(frozen=True)
class Target:
    """A resource the app uses, and the setting that names it (for fix hints)."""

    name: str
    setting: str


class Skipped(Exception):
    """A probe that does not apply to this configuration."""


class _UpstreamRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"The upstream answered HTTP {status}.")
        self.status = status


class _RedactionLeaked(Exception):
    """The stored canary still holds a value it was captured with."""


_PROBE_FAILURES = (AzureError, DistilleryError, httpx.HTTPError, _UpstreamRefused, _RedactionLeaked)


class QueueSendProbe(Protocol):
    def steps(self, queue_name: str) -> AsyncIterator[str]:
        """Prove the right to send to the queue without any handler receiving a message."""
        ...

    async def close(self) -> None: ...


class ServiceBusSendProbe:
    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    async def steps(self, queue_name: str) -> AsyncIterator[str]:
        async with self._client.get_queue_sender(queue_name) as sender:
            yield "schedule"
            message = ServiceBusMessage(_PROBE_BODY, content_type="application/json", subject="probe")
            numbers = await sender.schedule_messages(message, datetime.now(UTC) + timedelta(days=1))
            yield "cancel"
            await sender.cancel_scheduled_messages(numbers)


class StorageQueueSendProbe:
    """Locally the job queues are Azurite storage queues, created on first send as the app does."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service

    async def close(self) -> None:
        await self._service.close()

    async def steps(self, queue_name: str) -> AsyncIterator[str]:
        queue = self._service.get_queue_client(queue_name)
        yield "send"
        try:
            sent = await queue.send_message(_PROBE_BODY, visibility_timeout=3600)
        except HttpResponseError as exc:
            if exc.status_code != 404:
                raise
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()
            sent = await queue.send_message(_PROBE_BODY, visibility_timeout=3600)
        yield "delete"
        await queue.delete_message(sent.id, sent.pop_receipt)


class PermissionChecker:
    """Runs every probe, lists caller rights, saves the report and logs each failure as an error."""

    def __init__(
        self,
        *,
        containers: list[tuple[ContainerClient, str]],
        table: TableClient,
        table_setting: str,
        queues: list[Target],
        queue_probe: QueueSendProbe,
        token: Callable[[], Awaitable[Any]] | None,
        upstream: Upstream,
        probe_deployment: str | None,
        identities: list[Identity],
        reports: ReportStore,
        redaction: tuple[CompletionStore, frozenset[EntityKind]] | None = None,
    ) -> None:
        self._containers = containers
        self._table = table
        self._table_setting = table_setting
        self._queues = queues
        self._queue_probe = queue_probe
        self._token = token
        self._upstream = upstream
        self._probe_deployment = probe_deployment
        self._identities = identities
        self._reports = reports
        self._redaction = redaction
        """The store captures pass through and the kinds they redact; None with REDACTION=off."""

    async def latest(self) -> PermissionReport | None:
        return await self._reports.load(LATEST, PermissionReport)

    async def run(self) -> PermissionReport:
        results = [
            await _run(
                f"blob_container:{container.container_name}",
                "blob_container",
                Target(container.container_name, setting),
                _blob_steps(container),
            )
            for container, setting in self._containers
        ]
        table = Target(self._table.table_name, self._table_setting)
        results.append(await _run(f"table:{table.name}", "table", table, _table_steps(self._table)))
        for queue in self._queues:
            results.append(await _run(f"queue:{queue.name}", "queue", queue, self._queue_probe.steps(queue.name)))
        upstream = Target(self._upstream.label, "AZURE_OPENAI_ENDPOINT")
        results.append(await _run("upstream:token", "upstream_token", upstream, self._token_steps()))
        results.append(await _run("upstream:call", "upstream_call", upstream, self._call_steps()))
        detector = Target("canary completion", "REDACTION")
        results.append(await _run("redaction:canary", "redaction", detector, self._redaction_steps()))

        for result in results:
            if result.status is ProbeStatus.FAILED:
                log.error(
                    "Permission probe %s failed at %s: %s %s. Fix: %s",
                    result.name,
                    result.operations[-1],
                    result.error_code,
                    result.error,
                    result.fix,
                )
        report = PermissionReport(
            generated_at=datetime.now(UTC),
            healthy=all(result.status is not ProbeStatus.FAILED for result in results),
            probes=results,
            identities=self._identities,
            readers=[identity.name for identity in self._identities if Right.READ in identity.rights],
            actors=[identity.name for identity in self._identities if Right.ACTION in identity.rights],
        )
        await self._reports.save(LATEST, report)
        return report

    async def _token_steps(self) -> AsyncIterator[str]:
        if self._token is None:
            raise Skipped("The upstream is not Azure OpenAI with Entra ID: no token is needed.")
        yield "get_token"
        await self._token()

    async def _call_steps(self) -> AsyncIterator[str]:
        if self._upstream.label == "offline":
            raise Skipped("The offline model answers locally: there is no upstream to call.")
        if self._probe_deployment is None:
            raise Skipped("Set PERMISSION_PROBE_DEPLOYMENT to a deployment to call it with max_tokens: 1.")
        yield "chat_completion"
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        async with self._upstream.open(deployment=self._probe_deployment, body=body) as response:
            await response.read()
        # 429 means the call was authorised and only throttled.
        if not response.ok and response.status != 429:
            raise _UpstreamRefused(response.status)

    async def _redaction_steps(self) -> AsyncIterator[str]:
        """Capture a completion holding known personal data, as any capture is stored, and read it back."""
        if self._redaction is None:
            raise Skipped("REDACTION is off: completions are stored as sent.")
        store, kinds = self._redaction
        values = [value for kind, value in CANARY.items() if kind in kinds]
        if not values:
            raise Skipped("No kind in REDACTION_ENTITIES has a canary value.")
        completion_id = ids.new_completion_id()
        said = "Canary, not a real person: " + "; ".join(values)
        canary = StoredCompletion(
            id=completion_id,
            created=ids.captured_at_us(completion_id) // 1_000_000,
            deployment="distillery-redaction-canary",
            model="distillery-redaction-canary",
            metadata={"distillery_canary": "redaction"},
            request={
                "messages": [
                    {"role": "user", "content": said},
                    {"role": "tool", "tool_call_id": "canary", "content": json.dumps({"found": values})},
                ]
            },
            response={"choices": [{"index": 0, "message": {"role": "assistant", "content": said}}]},
        )
        yield "capture"
        await store.capture(canary)
        try:
            yield "read"
            kept = (await store.get(completion_id)).model_dump_json()
            yield "check"
            leaked = sum(value in kept for value in values)
            if leaked:
                raise _RedactionLeaked(f"The stored canary still holds {leaked} of its {len(values)} known values.")
        finally:
            with contextlib.suppress(DistilleryError):
                await store.delete(completion_id)


async def _blob_steps(container: ContainerClient) -> AsyncIterator[str]:
    blob = container.get_blob_client(f"_probes/{uuid.uuid4().hex}.txt")
    yield "write"
    await blob.upload_blob(b"permission probe", overwrite=True)
    yield "read"
    await (await blob.download_blob()).readall()
    yield "delete"
    await blob.delete_blob()


async def _table_steps(table: TableClient) -> AsyncIterator[str]:
    row = {"PartitionKey": "probe", "RowKey": uuid.uuid4().hex}
    yield "write"
    await table.create_entity(row)
    yield "query"
    query = "PartitionKey eq @p and RowKey eq @r"
    parameters = {"p": row["PartitionKey"], "r": row["RowKey"]}
    [_ async for _ in table.query_entities(query, parameters=parameters)]
    yield "delete"
    await table.delete_entity(row["PartitionKey"], row["RowKey"])


async def _run(name: str, kind: Kind, target: Target, steps: AsyncIterator[str]) -> ProbeResult:
    started = time.perf_counter()
    operations: list[str] = []

    def result(status: ProbeStatus, **details: Any) -> ProbeResult:
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        return ProbeResult(
            name=name,
            kind=kind,
            resource=target.name,
            operations=operations,
            status=status,
            elapsed_ms=elapsed_ms,
            **details,
        )

    try:
        async for operation in steps:
            operations.append(operation)
    except Skipped as skipped:
        return result(ProbeStatus.SKIPPED, fix=str(skipped))
    except _PROBE_FAILURES as exc:
        return result(ProbeStatus.FAILED, error_code=_code(exc), error=_first_line(exc), fix=_fix(kind, target, exc))
    return result(ProbeStatus.OK)


_ROLES: dict[Kind, str] = {
    "blob_container": "Storage Blob Data Contributor",
    "table": "Storage Table Data Contributor",
    "upstream_call": "Cognitive Services OpenAI User",
    "upstream_token": "Cognitive Services OpenAI User",
}
_MISSING_CODES = frozenset({"ContainerNotFound", "TableNotFound", "QueueNotFound", "ResourceNotFound"})
_DENIED_CODES = frozenset(
    {"AuthorizationPermissionMismatch", "AuthorizationFailure", "AuthenticationFailed", "Forbidden"}
)


def _fix(kind: Kind, target: Target, exc: BaseException) -> str:
    """The change most likely to make this probe pass, from the failure's kind."""
    what = kind.replace("_", " ")
    if isinstance(exc, RedactionUnavailable):
        return (
            "The PII detector did not answer: check REDACTION_LANGUAGE_ENDPOINT and that "
            f"{_MANAGED_IDENTITY} holds 'Cognitive Services User' on the Language resource."
        )
    if isinstance(exc, _RedactionLeaked):
        return "The detector missed a kind in REDACTION_ENTITIES: use REDACTION_LANGUAGE_ENDPOINT, or report it."
    if isinstance(exc, _UpstreamRefused):
        if exc.status in (401, 403):
            return (
                f"Assign '{_role(kind)}' on the Azure OpenAI resource to {_MANAGED_IDENTITY}, "
                "or check AZURE_OPENAI_API_KEY / OPENAI_API_KEY."
            )
        if exc.status == 404:
            return "No such deployment upstream: correct PERMISSION_PROBE_DEPLOYMENT or the upstream endpoint."
        return "The upstream failed the probe call; retry, and check its status page."
    if isinstance(exc, MessagingEntityNotFoundError) or _code(exc) in _MISSING_CODES:
        return f"Create the {what} '{target.name}' (the Bicep template creates it) or correct {target.setting}."
    if isinstance(exc, ServiceBusAuthorizationError) or _code(exc) in _DENIED_CODES or _status(exc) == 403:
        return f"Assign '{_role(kind)}' on the {what} '{target.name}' to {_MANAGED_IDENTITY}."
    if kind == "upstream_token" or isinstance(exc, ClientAuthenticationError | ServiceBusAuthenticationError):
        return (
            "The app could not get an Entra ID token: in Azure check that AZURE_CLIENT_ID is the client id of the "
            "function app's user-assigned identity (DISTILLERY_CREDENTIAL=managed_identity); locally run `az login`."
        )
    if isinstance(exc, ServiceRequestError | httpx.TransportError | DistilleryError):
        return f"Could not reach the {what} '{target.name}': check the account or namespace name and its network rules."
    return f"Check the {what} '{target.name}' exists, and the identity's role assignments and network rules."


def _role(kind: Kind) -> str:
    return _ROLES.get(kind, "Azure Service Bus Data Sender (Storage Queue Data Contributor locally)")


def _code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    if isinstance(exc, _UpstreamRefused):
        return f"http_{exc.status}"
    if isinstance(exc, DistilleryError):
        return exc.code
    return type(exc).__name__


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:300]
