"""The local stand-in for Event Grid's blob-created events (Azurite raises none).

In Azure, an Event Grid system topic on the storage account sends `Microsoft.Storage.BlobCreated`
for the completions container to the completion events queue (infra/app/events.bicep). Locally the
store tells this publisher after each captured document is written, and it posts the same event
shape to the Azurite queue of that name, in the background: the capture's answer never waits for it,
and a host killed before it posts leaves the document for the index sweep, as a lost event would.

Schema: https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue.aio import QueueClient

from shared.platform.job_queue import local_message
from shared.store.completion_indexer import BLOB_CREATED

log = logging.getLogger("local_host")

ACCOUNT = "devstoreaccount1"


def blob_created_event(container: str, blob_name: str) -> dict[str, object]:
    """An Event Grid `Microsoft.Storage.BlobCreated` event (Event Grid schema) for one block blob."""
    return {
        "id": str(uuid.uuid4()),
        "topic": f"/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/{ACCOUNT}",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob_name}",
        "eventType": BLOB_CREATED,
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "api": "PutBlob",
            "contentType": "application/octet-stream",
            "blobType": "BlockBlob",
            "url": f"http://127.0.0.1/{ACCOUNT}/{container}/{blob_name}",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


class LocalBlobEvents:
    """Posts a blob-created event to the local completion events queue for each captured document."""

    def __init__(self, queue: QueueClient, container: str) -> None:
        self._queue = queue
        self._container = container
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self._queue.create_queue()

    async def close(self) -> None:
        """Let the events being posted finish, then close the queue client."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._queue.close()

    def captured(self, completion_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._post(completion_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, completion_id: str) -> None:
        event = blob_created_event(self._container, f"{completion_id}.json")
        try:
            await self._queue.send_message(local_message(json.dumps(event), {}))
        except AzureError as exc:
            log.warning("Blob-created event for %s not posted (%s): the index sweep will find it", completion_id, exc)
