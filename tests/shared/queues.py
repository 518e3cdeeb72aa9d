"""The Azurite queues that stand in for Service Bus in tests: open one, or take its next message by hand."""

from __future__ import annotations

from azure.storage.queue.aio import QueueClient

from shared.platform.job_queue import read_local_message
from shared.services import Services


def local_queue(services: Services, queue_name: str) -> QueueClient:
    """The local queue named `queue_name` on these services' storage (use with `async with`)."""
    connection = services.settings.storage_connection_string
    assert connection is not None
    return QueueClient.from_connection_string(connection.get_secret_value(), queue_name)


async def take_message(services: Services, queue_name: str) -> bytes | None:
    """Remove and return the next message's body (its trace envelope unwrapped), if any."""
    async with local_queue(services, queue_name) as queue:
        messages = [message async for message in queue.receive_messages(max_messages=1)]
        if not messages:
            return None
        await queue.delete_message(messages[0])
        return read_local_message(messages[0].content)[0].encode()
