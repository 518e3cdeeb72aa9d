"""Fixtures on the session's Azurite: a fresh store, or the app's services with their own containers, table and queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.services import Services
from shared.store.completion_index import CompletionIndex
from shared.store.completion_store import CompletionStore
from tests.conftest import ServicesFactory


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


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory) -> Services:
    """The app's services on Azurite, with this test's own containers, table and dataset queue."""
    made = await make_services()
    async with QueueClient.from_connection_string(azurite.connection_string, made.settings.dataset_jobs_queue) as queue:
        await queue.create_queue()
    return made
