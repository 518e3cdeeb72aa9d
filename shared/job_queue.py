"""Sending job messages to the queues Service Bus triggers read.

In Azure the queues are Service Bus queues (duplicate detection drops a resend with the same
message id). Locally there is no Service Bus: messages go to an Azurite storage queue of the same
name, which the local host delivers to the same trigger function.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import ServiceBusError
from azure.storage.queue.aio import QueueServiceClient

from shared.errors import StorageUnavailable


class JobQueue(Protocol):
    async def send(self, queue_name: str, body: str, *, message_id: str) -> None:
        """Enqueue one JSON message; `message_id` is the job id, so resends are recognisable."""
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

    async def send(self, queue_name: str, body: str, *, message_id: str) -> None:
        message = ServiceBusMessage(body, message_id=message_id, content_type="application/json")
        try:
            async with self._client.get_queue_sender(queue_name) as sender:
                await sender.send_messages(message)
        except ServiceBusError as exc:
            raise StorageUnavailable(f"Could not send to the '{queue_name}' queue.", code="queue_unavailable") from exc

    async def close(self) -> None:
        await self._client.close()


class StorageJobQueue:
    """The local stand-in: an Azurite storage queue per Service Bus queue."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service
        self._created: set[str] = set()

    async def send(self, queue_name: str, body: str, *, message_id: str) -> None:
        queue = self._service.get_queue_client(queue_name)
        try:
            if queue_name not in self._created:
                with contextlib.suppress(ResourceExistsError):
                    await queue.create_queue()
                self._created.add(queue_name)
            await queue.send_message(body)
        except AzureError as exc:
            raise StorageUnavailable(f"Could not send to the '{queue_name}' queue.", code="queue_unavailable") from exc

    async def close(self) -> None:
        await self._service.close()
