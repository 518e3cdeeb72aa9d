"""Store-level fixtures: a fresh container and table on the session's Azurite for each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient

from local_host.azurite import Azurite
from shared.store.completion_index import CompletionIndex
from shared.store.completion_store import CompletionStore


@pytest.fixture
async def store(azurite: Azurite) -> AsyncIterator[CompletionStore]:
    name = f"t{uuid.uuid4().hex[:12]}"
    async with (
        BlobServiceClient.from_connection_string(azurite.connection_string) as blobs,
        TableServiceClient.from_connection_string(azurite.connection_string) as tables,
    ):
        container = await blobs.create_container(name)
        table = await tables.create_table(name)
        yield CompletionStore(container=container, index=CompletionIndex(table))
