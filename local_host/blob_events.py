"""The local stand-in for Event Grid's blob-created events (Azurite raises none).

In Azure, an Event Grid system topic on the storage account sends `Microsoft.Storage.BlobCreated`
for the completions container to the completion events queue (infra/app/events.bicep). Locally the
store tells this publisher after each captured document is written, and it posts the same event
shape to the Azurite queue of that name, in the background: the capture's answer never waits for it,
and a host killed before it posts leaves the document for the index sweep, as a lost event would.

A post waits `LINGER_SECONDS` after the first event, and the events captured meanwhile (or while a
post is in flight) go out together, as one message holding an array of events (the shape Event Grid
delivers to webhooks). In Azure publishing costs the app nothing, so the stand-in must not cost a
queue write and a delete per capture either: posted at once, each sequential capture's event write
ran beside the next call's document write in the one Azurite process and the host, and tripled
`store: true` latency (`python -m bench.capture`, part 1). Event Grid itself delivers within about a second.

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


MAX_EVENTS_PER_MESSAGE = 40
"""About 24 KiB of events: well inside a storage queue message's 64 KiB."""

LINGER_SECONDS = 0.5
"""How long the first event waits for others to share its queue message: sequential calls every few
ms then share one post per ~40 captures, and the indexer gets fuller batches (its CPU per completion
and its load on Azurite fall, so the proxy's writes wait less). Lists show a completion up to this
much later, within Event Grid's own typical delivery latency."""


class LocalBlobEvents:
    """Posts blob-created events to the local completion events queue for captured documents."""

    def __init__(self, queue: QueueClient, container: str) -> None:
        self._queue = queue
        self._container = container
        self._waiting: list[dict[str, object]] = []
        self._posting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self._queue.create_queue()

    async def close(self) -> None:
        """Let the events being posted finish, then close the queue client."""
        if self._posting is not None:
            await asyncio.gather(self._posting, return_exceptions=True)
        await self._queue.close()

    def captured(self, completion_id: str) -> None:
        self._waiting.append(blob_created_event(self._container, f"{completion_id}.json"))
        if self._posting is None:
            self._posting = asyncio.get_running_loop().create_task(self._post_waiting())

    async def _post_waiting(self) -> None:
        try:
            await asyncio.sleep(LINGER_SECONDS)
            while self._waiting:
                events = self._waiting[:MAX_EVENTS_PER_MESSAGE]
                del self._waiting[:MAX_EVENTS_PER_MESSAGE]
                try:
                    await self._queue.send_message(local_message(json.dumps(events), {}))
                except AzureError as exc:
                    log.warning(
                        "%s blob-created events not posted (%s): the index sweep will find them", len(events), exc
                    )
        finally:
            self._posting = None
