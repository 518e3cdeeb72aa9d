"""The one place clients are built: once per worker, lazily, from the settings.

Azure SDK clients keep connection pools bound to the worker's event loop, so they are created on
first use inside that loop, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential, get_bearer_token_provider
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry
from azure.storage.queue.aio import QueueServiceClient

from shared.access import Authenticator
from shared.capture import ChatCapture
from shared.completion_index import CompletionIndex
from shared.completion_store import CompletionStore
from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.records import DatasetRecords
from shared.errors import ConfigurationError
from shared.job_queue import JobQueue, ServiceBusJobQueue, StorageJobQueue
from shared.offline_model import OfflineModel
from shared.settings import CredentialKind, Settings, get_settings
from shared.upstream import HttpUpstream, ModelMap, Upstream, azure_openai_url, openai_compatible_url

log = logging.getLogger(__name__)

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"

# Storage calls fail fast: a caller waiting on a proxied completion must not wait out long retries.
_STORAGE_TIMEOUTS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 30}
_BLOB_RETRY = LinearRetry(backoff=0.2, random_jitter_range=0.1, retry_total=2)
_TABLE_RETRY: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.2, "retry_backoff_max": 2}


def build_credential(settings: Settings) -> AsyncTokenCredential:
    """Managed identity in Azure (never silently another credential); developer sign-ins locally."""
    if settings.credential is CredentialKind.MANAGED_IDENTITY:
        return ManagedIdentityCredential(client_id=settings.azure_client_id)
    return DefaultAzureCredential(exclude_managed_identity_credential=True)


@dataclass
class Services:
    """Everything the functions call, built from one `Settings`."""

    settings: Settings

    @cached_property
    def credential(self) -> AsyncTokenCredential:
        return build_credential(self.settings)

    @cached_property
    def blob_service(self) -> BlobServiceClient:
        if self.settings.storage_connection_string is not None:
            return BlobServiceClient.from_connection_string(
                self.settings.storage_connection_string.get_secret_value(),
                retry_policy=_BLOB_RETRY,
                **_STORAGE_TIMEOUTS,
            )
        return BlobServiceClient(
            f"https://{self.settings.storage_account_name}.blob.core.windows.net",
            credential=self.credential,
            retry_policy=_BLOB_RETRY,
            **_STORAGE_TIMEOUTS,
        )

    @cached_property
    def table_service(self) -> TableServiceClient:
        if self.settings.storage_connection_string is not None:
            return TableServiceClient.from_connection_string(
                self.settings.storage_connection_string.get_secret_value(),
                **_TABLE_RETRY,
                **_STORAGE_TIMEOUTS,
            )
        return TableServiceClient(
            f"https://{self.settings.storage_account_name}.table.core.windows.net",
            credential=self.credential,
            **_TABLE_RETRY,
            **_STORAGE_TIMEOUTS,
        )

    @cached_property
    def completions_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.completions_container)

    @cached_property
    def index_table(self) -> TableClient:
        return self.table_service.get_table_client(self.settings.completion_index_table)

    @cached_property
    def store(self) -> CompletionStore:
        return CompletionStore(container=self.completions_container, index=CompletionIndex(self.index_table))

    @cached_property
    def upstream(self) -> Upstream:
        return build_upstream(self.settings, self.credential)

    @cached_property
    def capture(self) -> ChatCapture:
        return ChatCapture(upstream=self.upstream, store=self.store, store_enabled=self.settings.store_enabled)

    @cached_property
    def job_queue(self) -> JobQueue:
        if self.settings.service_bus_namespace is not None:
            return ServiceBusJobQueue.for_namespace(self.settings.service_bus_namespace, self.credential)
        if self.settings.storage_connection_string is not None:
            connection = self.settings.storage_connection_string.get_secret_value()
            return StorageJobQueue(QueueServiceClient.from_connection_string(connection))
        raise ConfigurationError(
            "Set ServiceBusConnection__fullyQualifiedNamespace: job queues need Service Bus in Azure"
        )

    @cached_property
    def authenticator(self) -> Authenticator:
        return Authenticator(api_key=self.settings.api_key)

    @cached_property
    def datasets_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.datasets_container)

    @cached_property
    def dataset_jobs(self) -> DatasetJobs:
        settings = self.settings
        return DatasetJobs(
            records=DatasetRecords(container=self.datasets_container),
            store=self.store,
            job_queue=self.job_queue,
            queue_name=settings.dataset_jobs_queue,
            limits=BuildLimits(
                chunk_seconds=settings.dataset_chunk_seconds,
                chunk_completions=settings.dataset_chunk_completions,
                read_concurrency=settings.dataset_read_concurrency,
                max_example_tokens=settings.dataset_max_example_tokens,
                max_delivery_count=settings.dataset_max_delivery_count,
            ),
        )

    async def ensure_storage(self) -> None:
        """Create the containers and table the app writes to, if missing (Bicep creates them in Azure)."""
        with contextlib.suppress(ResourceExistsError):
            await self.completions_container.create_container()
        with contextlib.suppress(ResourceExistsError):
            await self.datasets_container.create_container()
        await self.table_service.create_table_if_not_exists(self.settings.completion_index_table)


def build_upstream(settings: Settings, credential: AsyncTokenCredential) -> Upstream:
    timeout = httpx.Timeout(settings.upstream_timeout_seconds, connect=10.0)
    limits = httpx.Limits(
        max_connections=settings.upstream_max_connections,
        max_keepalive_connections=settings.upstream_max_connections,
    )
    client = httpx.AsyncClient(timeout=timeout, limits=limits)
    if settings.azure_openai_endpoint is not None:
        return HttpUpstream(
            client=client,
            url_for=azure_openai_url(str(settings.azure_openai_endpoint), settings.azure_openai_api_version),
            auth_headers=_azure_auth(settings, credential),
            model_for=lambda _deployment: None,
            label="azure-openai",
        )
    if settings.openai_base_url is not None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        headers = {"authorization": f"Bearer {key}"} if key else {}

        async def static_headers() -> dict[str, str]:
            return headers

        return HttpUpstream(
            client=client,
            url_for=openai_compatible_url(str(settings.openai_base_url)),
            auth_headers=static_headers,
            model_for=ModelMap(settings.deployment_models),
        )
    log.warning("No upstream configured (AZURE_OPENAI_ENDPOINT / OPENAI_BASE_URL): serving the offline model")
    return OfflineModel()


def _azure_auth(settings: Settings, credential: AsyncTokenCredential) -> Any:
    if settings.azure_openai_api_key is not None:
        key_headers = {"api-key": settings.azure_openai_api_key.get_secret_value()}

        async def key_auth() -> dict[str, str]:
            return key_headers

        return key_auth
    token_provider = get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE)

    async def entra_auth() -> dict[str, str]:
        return {"authorization": f"Bearer {await token_provider()}"}

    return entra_auth


_services: Services | None = None


def get_services() -> Services:
    """The worker's services, built on first use from the validated settings."""
    global _services
    if _services is None:
        _services = Services(get_settings())
    return _services
