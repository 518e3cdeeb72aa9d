"""Sending job messages to the queues Service Bus triggers read.

In Azure the queues are Service Bus queues (duplicate detection drops a resend with the same
message id). Locally there is no Service Bus: messages go to an Azurite storage queue of the same
name, which the local host delivers to the same trigger function.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError
from azure.storage.queue.aio import QueueServiceClient

from shared.platform.errors import StorageUnavailable
from shared.platform.telemetry import enqueue_span


class JobQueue(Protocol):
    async def send(self, queue_name: str, body: str, *, message_id: str, delay: float = 0.0) -> None:
        """Enqueue one JSON message; `message_id` is the job id, so resends are recognisable.

        The message carries the sender's trace context (W3C `traceparent`) as application properties.
        `delay` (seconds) holds it back before it is delivered, e.g. the next poll of a long upstream job.
        """
        ...

    async def close(self) -> None:
        """Close the connections (for tests and tools; a worker keeps them for its life)."""
        ...


class ServiceBusJobQueue:
    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client

    @classmethod
    def for_namespace(cls, namespace: str, credential: AsyncTokenCredential) -> ServiceBusJobQueue:
        return cls(ServiceBusClient(namespace, credential))

    @classmethod
    def from_connection_string(cls, connection_string: str) -> ServiceBusJobQueue:
        return cls(ServiceBusClient.from_connection_string(connection_string))

    async def send(self, queue_name: str, body: str, *, message_id: str, delay: float = 0.0) -> None:
        with enqueue_span("servicebus", queue_name, message_id) as properties:
            message = ServiceBusMessage(
                body,
                message_id=message_id,
                content_type="application/json",
                application_properties=properties,  # type: ignore[arg-type]  # str values are among those allowed
            )
            if delay > 0:  # a scheduled message: Service Bus enqueues it at that time
                message.scheduled_enqueue_time_utc = datetime.now(UTC) + timedelta(seconds=delay)
            try:
                async with self._client.get_queue_sender(queue_name) as sender:
                    await sender.send_messages(message)
            except ServiceBusError as exc:
                raise StorageUnavailable(
                    f"Could not send to the '{queue_name}' queue.", code="queue_unavailable"
                ) from exc

    async def close(self) -> None:
        await self._client.close()


class StorageJobQueue:
    """The local stand-in: an Azurite storage queue per Service Bus queue."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service
        self._created: set[str] = set()

    async def send(self, queue_name: str, body: str, *, message_id: str, delay: float = 0.0) -> None:
        queue = self._service.get_queue_client(queue_name)
        with enqueue_span("azure_storage_queue", queue_name, message_id) as properties:
            try:
                if queue_name not in self._created:
                    with contextlib.suppress(ResourceExistsError):
                        await queue.create_queue()
                    self._created.add(queue_name)
                # A storage queue message is invisible for its visibility timeout (whole seconds) after the send.
                hidden = math.ceil(delay) if delay > 0 else None
                await queue.send_message(local_message(body, properties), visibility_timeout=hidden)
            except AzureError as exc:
                raise StorageUnavailable(
                    f"Could not send to the '{queue_name}' queue.", code="queue_unavailable"
                ) from exc

    async def close(self) -> None:
        await self._service.close()


_ENVELOPE = "distillery_local_message"


def local_message(body: str, application_properties: dict[str, str]) -> str:
    """A storage queue message standing in for a Service Bus message with application properties.

    A storage queue message has a body only, so properties (the trace context) travel in a small
    JSON envelope; a message without properties is its body, as a producer may send it directly.
    """
    if not application_properties:
        return body
    return json.dumps({_ENVELOPE: 1, "body": body, "application_properties": application_properties})


def read_local_message(content: str) -> tuple[str, dict[str, str]]:
    """The body and application properties of a local queue message (see `local_message`)."""
    try:
        value: Any = json.loads(content)
    except ValueError:
        return content, {}
    if not isinstance(value, dict) or value.get(_ENVELOPE) != 1 or not isinstance(value.get("body"), str):
        return content, {}
    properties = value.get("application_properties")
    return value["body"], {str(k): str(v) for k, v in properties.items()} if isinstance(properties, dict) else {}
