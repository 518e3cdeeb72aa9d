"""The local blob-created stand-in: captures a few ms apart share one queue message, as Event Grid batches."""

from __future__ import annotations

import json
import uuid

from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from local_host.blob_events import LocalBlobEvents


async def test_sequential_captures_share_one_event_message(azurite: Azurite) -> None:
    name = f"q{uuid.uuid4().hex[:12]}"
    events = LocalBlobEvents(QueueClient.from_connection_string(azurite.connection_string, name), "completions")
    await events.start()
    async with QueueClient.from_connection_string(azurite.connection_string, name) as queue:
        ids = [f"chatcmpl-{n}" for n in range(5)]
        for completion_id in ids:
            events.captured(completion_id)
            await queue.get_queue_properties()  # a storage round trip, as the next call's document write
        await events.close()
        messages = [message async for message in queue.receive_messages(max_messages=32)]
    assert len(messages) == 1  # posted at once, the first event would have gone alone
    subjects = [event["subject"] for event in json.loads(messages[0].content)]
    assert subjects == [f"/blobServices/default/containers/completions/blobs/{i}.json" for i in ids]
