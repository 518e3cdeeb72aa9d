"""The one place clients are built: once per worker, lazily, from the settings.

Azure SDK clients keep connection pools bound to the worker's event loop, so they are created on
first use inside that loop, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.identity.aio import get_bearer_token_provider
from azure.servicebus.aio import ServiceBusClient
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry
from azure.storage.queue.aio import QueueServiceClient

from shared.aliases.online import OnlineEvals
from shared.aliases.records import Comparison
from shared.aliases.routes import AliasRoutes
from shared.aliases.service import Aliases
from shared.capture.background import BackgroundResponses
from shared.capture.proxy import ChatCapture
from shared.curation.bulk import BulkActions
from shared.curation.relabel import Relabels
from shared.curation.scoring import Scoring
from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import DatasetRecords
from shared.erasure.forgetting import Forgetting
from shared.erasure.purge import PurgeService
from shared.erasure.retention import RetentionSweep
from shared.evals.files import EvalFiles
from shared.evals.metrics import TextMetrics
from shared.evals.records import EvalStore
from shared.evals.service import EvalLimits, EvalService
from shared.fine_tuning.api import FineTuningApi
from shared.fine_tuning.comparison import StudentComparison
from shared.fine_tuning.control_plane import AccountId, ControlPlane
from shared.fine_tuning.deployments import StudentDeployments
from shared.fine_tuning.jobs import FineTuningJobs
from shared.platform.access import Authenticator
from shared.platform.credentials import (
    COGNITIVE_SERVICES_SCOPE,
    SERVICE_BUS_SCOPE,
    STORAGE_SCOPE,
    build_credential,
    credential_problem,
)
from shared.platform.errors import ConfigurationError, UpstreamUnavailable
from shared.platform.job_queue import JobQueue, ServiceBusJobQueue, StorageJobQueue
from shared.platform.settings import RedactionMode, Settings, get_settings
from shared.redaction.detectors import (
    OFFLINE_KINDS,
    CoveredDetector,
    Detector,
    LanguageDetector,
    OfflineDetector,
)
from shared.redaction.redactor import Redactor
from shared.reports.cost import AliasPair
from shared.reports.permission_health import (
    PermissionChecker,
    QueueSendProbe,
    ServiceBusSendProbe,
    StorageQueueSendProbe,
    Target,
)
from shared.reports.quota import QuotaGate, QuotaReporter
from shared.reports.report_requests import ReportKind, ReportRequests
from shared.reports.report_store import ReportStore
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.completion_indexer import CompletionIndexer
from shared.store.completion_store import CompletionStore
from shared.store.json_blobs import JsonBlobs
from shared.store.read_budget import ByteBudget
from shared.store.usage import UsageCounter
from shared.upstream.client import (
    HttpUpstream,
    ModelMap,
    Upstream,
    azure_openai_url,
    azure_openai_v1_url,
    openai_compatible_url,
)
from shared.upstream.model_calls import ModelCalls
from shared.upstream.offline_model import OfflineModel

log = logging.getLogger(__name__)

# Storage calls fail fast: a caller waiting on a proxied completion must not wait out long retries.
# `use_env_settings` off: aiohttp would otherwise look up netrc and proxy variables on a thread for
# every storage request (two thread-pool hops each); the app reaches storage directly.
_STORAGE_TIMEOUTS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 30, "use_env_settings": False}
_BLOB_FIRST_GET: dict[str, Any] = {"max_single_get_size": 256 * 1024}
"""A download's first response is at most this big: it tells a document's size before the rest is
fetched, so the read budget is taken before a large document is in memory (default: 32 MiB)."""
_BLOB_RETRY = LinearRetry(backoff=0.2, random_jitter_range=0.1, retry_total=2)  # type: ignore[arg-type]  # sub-second works: it feeds random.uniform
_SSE_LINE_LIMIT = 8 * 1024 * 1024
"""Longest server-sent event line read from an upstream (a chunk carrying a large tool call)."""
_TABLE_RETRY: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.2, "retry_backoff_max": 2}


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
                **_BLOB_FIRST_GET,
            )
        return BlobServiceClient(
            f"https://{self.settings.storage_account_name}.blob.core.windows.net",
            credential=self.credential,
            retry_policy=_BLOB_RETRY,
            **_STORAGE_TIMEOUTS,
            **_BLOB_FIRST_GET,
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
        store = CompletionStore(
            container=self.completions_container,
            index=CompletionIndex(self.index_table),
            usage=self.usage,
            max_document_bytes=self.settings.max_stored_document_bytes,
            budget=ByteBudget(self.settings.document_read_budget_bytes),
        )
        if self.redactor is not None:
            store.redact = self.redactor.redact
            if self.redactor.metadata:
                store.redact_metadata = self.redactor.redact_metadata
        return store

    @cached_property
    def redactor(self) -> Redactor | None:
        """What every capture passes before it is stored; None with REDACTION=off."""
        return build_redactor(self.settings, self.credential)

    @cached_property
    def indexer(self) -> CompletionIndexer:
        return CompletionIndexer(
            store=self.store,
            table=self.index_table,
            container_name=self.settings.completions_container,
            usage=self.usage,
            sweep_grace_seconds=self.settings.index_sweep_grace_seconds,
            after=self._sample_online,
        )

    async def _sample_online(self, entries: list[IndexEntry]) -> None:
        await self.online_evals.sample(entries)

    @cached_property
    def upstream(self) -> Upstream:
        return build_upstream(self.settings, self.credential)

    @cached_property
    def capture(self) -> ChatCapture:
        return ChatCapture(
            upstream=self.upstream,
            store=self.store,
            store_enabled=self.settings.store_enabled,
            quota=self.quota_gate,
            log_content=self.settings.log_content,
            route=self.alias_routes.route,
            background=self.background_responses,
        )

    @cached_property
    def background_responses(self) -> BackgroundResponses | None:
        """Polls `background: true` responses upstream; None for the offline model (nothing to poll)."""
        if not isinstance(self.upstream, HttpUpstream):
            return None
        return BackgroundResponses(
            records=JsonBlobs(container=self.reports_container, label="background response"),
            queue=self.job_queue,
            queue_name=self.settings.purge_jobs_queue,
            upstream=self.upstream,
        )

    @cached_property
    def aliases_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.aliases_container)

    @cached_property
    def alias_blobs(self) -> JsonBlobs:
        return JsonBlobs(container=self.aliases_container, label="alias")

    @cached_property
    def alias_routes(self) -> AliasRoutes:
        return AliasRoutes(
            blobs=self.alias_blobs,
            ttl_seconds=self.settings.alias_cache_seconds,
        )

    @cached_property
    def aliases(self) -> Aliases:
        async def compare(eval_id: str, run_ids: list[str]) -> dict[str, Any]:
            return await self.evals.compare(eval_id, run_ids, owner=None)

        async def find_comparison(deployment: str) -> Comparison | None:
            runs = await self.student_deployments.comparison_of(deployment)
            if runs is None or runs.eval_id is None or runs.teacher_run_id is None or runs.student_run_id is None:
                return None
            return Comparison(
                eval_id=runs.eval_id, teacher_run_id=runs.teacher_run_id, student_run_id=runs.student_run_id
            )

        return Aliases(
            blobs=self.alias_blobs,
            routes=self.alias_routes,
            compare=compare,
            find_comparison=find_comparison,
        )

    @cached_property
    def online_evals(self) -> OnlineEvals:
        return OnlineEvals(
            aliases=self.aliases,
            blobs=self.alias_blobs,
            completions=self.store,
            job_queue=self.job_queue,
            queue_name=self.settings.online_evals_queue,
            calls=self.model_calls,
            metrics=self.text_metrics,
            embeddings_deployment=self.settings.eval_embeddings_deployment,
        )

    @cached_property
    def job_queue(self) -> JobQueue:
        if self.settings.service_bus_namespace is not None:
            return ServiceBusJobQueue.for_namespace(self.settings.service_bus_namespace, self.credential)
        if self.settings.storage_connection_string is not None:
            connection = self.settings.storage_connection_string.get_secret_value()
            return StorageJobQueue(QueueServiceClient.from_connection_string(connection, use_env_settings=False))
        raise ConfigurationError(
            "Set ServiceBusConnection__fullyQualifiedNamespace: job queues need Service Bus in Azure"
        )

    @cached_property
    def authenticator(self) -> Authenticator:
        return Authenticator(
            api_key=self.settings.api_key,
            service_keys=self.settings.api_keys,
            trust_app_service_auth=self.settings.trust_app_service_auth,
            owner_scoping=self.settings.owner_scoping,
        )

    def token_scopes(self) -> list[str]:
        """The Entra token scopes this configuration needs from its credential."""
        settings = self.settings
        scopes = []
        if settings.azure_openai_endpoint is not None and settings.azure_openai_api_key is None:
            scopes.append(COGNITIVE_SERVICES_SCOPE)
        if settings.storage_connection_string is None:
            scopes.append(STORAGE_SCOPE)
        if settings.service_bus_namespace is not None:
            scopes.append(SERVICE_BUS_SCOPE)
        return scopes

    async def check_credential(self) -> None:
        """Fail fast with a `ConfigurationError` naming what to fix when a needed token is out of reach.

        Azure Functions Python has no async start-up hook, so there the first upstream call reports
        the same problem (logged, and a 502 to the caller); the local host runs this at start-up.
        """
        for scope in self.token_scopes():
            try:
                await self.credential.get_token(scope)
            except AzureError as exc:  # refused, or no identity endpoint to ask
                raise ConfigurationError(
                    f"Cannot get an Entra token for {scope}: {credential_problem(self.settings)}"
                ) from exc

    @cached_property
    def usage(self) -> UsageCounter:
        return UsageCounter(table=self.index_table, per_owner=self.settings.owner_quota_bytes > 0)

    @cached_property
    def quota_gate(self) -> QuotaGate:
        return QuotaGate(
            usage=self.usage,
            cap_bytes=self.settings.storage_quota_bytes,
            mode=self.settings.storage_quota_mode,
            owner_cap_bytes=self.settings.owner_quota_bytes,
        )

    @cached_property
    def model_calls(self) -> ModelCalls:
        return ModelCalls(
            upstream=model_calls_upstream(self.settings, self.upstream),
            max_attempts=self.settings.model_call_max_attempts,
        )

    @cached_property
    def evals_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.evals_container)

    @cached_property
    def eval_files(self) -> EvalFiles:
        return EvalFiles(container=self.evals_container)

    @cached_property
    def text_metrics(self) -> TextMetrics:
        return TextMetrics(
            max_chars=self.settings.eval_max_compared_chars,
            timeout_seconds=self.settings.eval_metric_timeout_seconds,
        )

    @cached_property
    def evals(self) -> EvalService:
        settings = self.settings
        return EvalService(
            store=EvalStore(container=self.evals_container),
            completions=self.store,
            datasets=self.dataset_jobs.records,
            membership=DatasetMembership(self.index_table),
            files=self.eval_files,
            calls=self.model_calls,
            metrics=self.text_metrics,
            budget=self.store.budget,
            job_queue=self.job_queue,
            queue_name=settings.eval_jobs_queue,
            limits=EvalLimits(
                concurrency=settings.eval_concurrency,
                chunk_seconds=settings.eval_chunk_seconds,
                max_delivery_count=settings.eval_max_delivery_count,
                default_token_cap=settings.eval_default_token_cap,
                embeddings_deployment=settings.eval_embeddings_deployment,
            ),
            fine_tuning_job_of=self.fine_tuning.job_of,
        )

    @cached_property
    def fine_tuning_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.fine_tuning_container)

    @cached_property
    def fine_tuning(self) -> FineTuningJobs:
        settings = self.settings
        return FineTuningJobs(
            blobs=JsonBlobs(container=self.fine_tuning_container, label="fine-tuning"),
            datasets=self.dataset_jobs.records,
            api=build_fine_tuning_api(settings, self.credential),
            job_queue=self.job_queue,
            queue_name=settings.fine_tuning_jobs_queue,
            delivery_seconds=settings.fine_tuning_delivery_seconds,
            max_delivery_count=settings.fine_tuning_max_delivery_count,
        )

    @cached_property
    def student_deployments(self) -> StudentDeployments:
        settings = self.settings
        return StudentDeployments(
            jobs=self.fine_tuning,
            control_plane=build_control_plane(settings, self.credential),
            missing_control_plane=missing_control_plane(settings),
            default_sku=settings.fine_tuning_deployment_sku,
            default_capacity=settings.fine_tuning_deployment_capacity,
            comparison=StudentComparison(
                evals=self.evals,
                datasets=self.dataset_jobs.records,
                judge_deployment=settings.comparison_judge_deployment,
            ),
        )

    @cached_property
    def reports_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.reports_container)

    @cached_property
    def datasets_container(self) -> ContainerClient:
        return self.blob_service.get_container_client(self.settings.datasets_container)

    @cached_property
    def report_store(self) -> ReportStore:
        return ReportStore(container=self.reports_container)

    @cached_property
    def quota_reporter(self) -> QuotaReporter:
        return QuotaReporter(
            completions=self.completions_container,
            datasets=self.datasets_container,
            evals=self.evals_container,
            index=self.store.index,
            usage=self.usage,
            reports=self.report_store,
            cap_bytes=self.settings.storage_quota_bytes,
            mode=self.settings.storage_quota_mode,
            top_values=self.settings.quota_top_values,
            prices=self.settings.price_table,
            alias_pairs=self._alias_pairs,
        )

    async def _alias_pairs(self) -> list[AliasPair]:
        """Each alias's teacher (its fallback) and students (its other targets), for the cost report's break-even."""
        return [
            AliasPair(
                alias=record.name,
                teacher=record.fallback,
                students=[t.deployment for t in record.targets if t.deployment != record.fallback],
            )
            for record in await self.aliases.list()
        ]

    @cached_property
    def queue_probe(self) -> QueueSendProbe:
        if self.settings.service_bus_namespace is not None:
            return ServiceBusSendProbe(ServiceBusClient(self.settings.service_bus_namespace, self.credential))
        if self.settings.storage_connection_string is not None:
            connection = self.settings.storage_connection_string.get_secret_value()
            return StorageQueueSendProbe(QueueServiceClient.from_connection_string(connection, use_env_settings=False))
        raise ConfigurationError(
            "Set ServiceBusConnection__fullyQualifiedNamespace: job queues need Service Bus in Azure"
        )

    @cached_property
    def permission_checker(self) -> PermissionChecker:
        settings = self.settings
        entra_upstream = settings.azure_openai_endpoint is not None and settings.azure_openai_api_key is None

        async def token() -> object:
            return await self.credential.get_token(COGNITIVE_SERVICES_SCOPE)

        return PermissionChecker(
            containers=[
                (self.completions_container, "COMPLETIONS_CONTAINER"),
                (self.datasets_container, "DATASETS_CONTAINER"),
                (self.reports_container, "REPORTS_CONTAINER"),
                (self.evals_container, "EVALS_CONTAINER"),
                (self.fine_tuning_container, "FINE_TUNING_CONTAINER"),
                (self.aliases_container, "ALIASES_CONTAINER"),
            ],
            table=self.index_table,
            table_setting="COMPLETION_INDEX_TABLE",
            queues=[
                Target(settings.dataset_jobs_queue, "DATASET_JOBS_QUEUE"),
                Target(settings.purge_jobs_queue, "PURGE_JOBS_QUEUE"),
                Target(settings.eval_jobs_queue, "EVAL_JOBS_QUEUE"),
                Target(settings.fine_tuning_jobs_queue, "FINE_TUNING_JOBS_QUEUE"),
                Target(settings.online_evals_queue, "ONLINE_EVALS_QUEUE"),
            ],
            queue_probe=self.queue_probe,
            token=token if entra_upstream else None,
            upstream=self.upstream,
            probe_deployment=settings.permission_probe_deployment,
            identities=self.authenticator.identities(),
            reports=self.report_store,
            redaction=(self.store, self.redactor.kinds) if self.redactor is not None else None,
        )

    @cached_property
    def report_requests(self) -> ReportRequests:
        async def quota() -> object:
            return await self.quota_reporter.run()

        async def permissions() -> object:
            return await self.permission_checker.run()

        return ReportRequests(
            reports=self.report_store,
            queue=self.job_queue,
            queue_name=self.settings.purge_jobs_queue,
            builders={ReportKind.QUOTA: quota, ReportKind.PERMISSIONS: permissions},
        )

    @cached_property
    def retention(self) -> RetentionSweep:
        return RetentionSweep(
            store=self.store,
            indexer=self.indexer,
            retention_days=self.settings.retention_days,
            on_deleted=self.forgetting.deleted,
            evals=self.evals,
        )

    @cached_property
    def forgetting(self) -> Forgetting:
        return Forgetting(store=self.store, datasets=self.dataset_jobs, evals=self.evals, fine_tuning=self.fine_tuning)

    @cached_property
    def scoring(self) -> Scoring:
        return Scoring(store=self.store)

    @cached_property
    def bulk_actions(self) -> BulkActions:
        return BulkActions(
            store=self.store,
            records=JsonBlobs(container=self.reports_container, label="bulk action"),
            queue=self.job_queue,
            queue_name=self.settings.purge_jobs_queue,
        )

    @cached_property
    def relabels(self) -> Relabels:
        return Relabels(
            store=self.store,
            calls=self.model_calls,
            records=JsonBlobs(container=self.reports_container, label="relabel"),
            queue=self.job_queue,
            queue_name=self.settings.purge_jobs_queue,
            batches=self.fine_tuning.api,
        )

    @cached_property
    def purges(self) -> PurgeService:
        return PurgeService(
            store=self.store,
            records=JsonBlobs(container=self.reports_container, label="purge"),
            queue=self.job_queue,
            queue_name=self.settings.purge_jobs_queue,
            on_deleted=self.forgetting.deleted,
        )

    async def close(self) -> None:
        """Close the storage clients and upstream connections built so far (for tests and tools; a worker keeps them for its life)."""
        for name in ("blob_service", "table_service", "queue_probe"):
            client = self.__dict__.get(name)
            if client is not None:
                await client.close()
        job_queue = self.__dict__.get("job_queue")
        if job_queue is not None:
            await job_queue.close()
        upstream = self.__dict__.get("upstream")
        if isinstance(upstream, HttpUpstream):
            await upstream.session.close()
        fine_tuning = self.__dict__.get("fine_tuning")
        if fine_tuning is not None and fine_tuning.api is not None:
            await fine_tuning.api.session.close()
        deployments = self.__dict__.get("student_deployments")
        if deployments is not None and deployments.control_plane is not None:
            await deployments.control_plane.close()
        redactor = self.__dict__.get("redactor")
        if redactor is not None:
            await redactor.close()
        metrics = self.__dict__.get("text_metrics")
        if metrics is not None:
            metrics.close()
        credential = self.__dict__.get("credential")
        if credential is not None:
            await credential.close()

    @cached_property
    def dataset_jobs(self) -> DatasetJobs:
        settings = self.settings
        return DatasetJobs(
            records=DatasetRecords(container=self.datasets_container),
            store=self.store,
            membership=DatasetMembership(self.index_table),
            job_queue=self.job_queue,
            queue_name=settings.dataset_jobs_queue,
            limits=BuildLimits(
                chunk_seconds=settings.dataset_chunk_seconds,
                chunk_completions=settings.dataset_chunk_completions,
                slice_completions=settings.dataset_slice_completions,
                read_concurrency=settings.dataset_read_concurrency,
                max_example_tokens=settings.dataset_max_example_tokens,
                max_delivery_count=settings.dataset_max_delivery_count,
            ),
            quota=self.quota_gate,
        )

    async def ensure_storage(self) -> None:
        """Create the containers and table the app writes to, if missing (Bicep creates them in Azure)."""
        for container in (
            self.completions_container,
            self.reports_container,
            self.datasets_container,
            self.evals_container,
            self.fine_tuning_container,
            self.aliases_container,
        ):
            with contextlib.suppress(ResourceExistsError):
                await container.create_container()
        await self.table_service.create_table_if_not_exists(self.settings.completion_index_table)


def build_redactor(settings: Settings, credential: AsyncTokenCredential) -> Redactor | None:
    if settings.redaction is RedactionMode.OFF:
        return None
    kinds = frozenset(settings.redaction_entities)
    detector: Detector
    if settings.redaction_language_endpoint is None:
        detector = OfflineDetector()
    else:
        language = LanguageDetector(
            endpoint=str(settings.redaction_language_endpoint),
            credential=credential,
            timeout_seconds=settings.redaction_timeout_seconds,
        )
        detector = CoveredDetector(language, OfflineDetector()) if kinds <= OFFLINE_KINDS else language
    key = settings.redaction_key.get_secret_value().encode() if settings.redaction_key is not None else None
    return Redactor(
        detector=detector, mode=settings.redaction, kinds=kinds, key=key, metadata=settings.redaction_metadata
    )


def upstream_label(settings: Settings) -> str:
    """Which upstream the settings choose, without connecting to it."""
    if settings.azure_openai_endpoint is not None:
        return "azure-openai"
    if settings.openai_base_url is not None:
        return "openai-compatible"
    return "offline"


def _upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The pooled connections to an HTTP upstream (made in the running event loop, on first use)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream_max_connections),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=settings.upstream_timeout_seconds),
        read_bufsize=_SSE_LINE_LIMIT,
    )


def build_upstream(settings: Settings, credential: AsyncTokenCredential) -> Upstream:
    if settings.azure_openai_endpoint is not None:
        return HttpUpstream(
            session=_upstream_session(settings),
            url_for=azure_openai_url(str(settings.azure_openai_endpoint), settings.azure_openai_api_version),
            auth_headers=_azure_auth(settings, credential),
            model_for=lambda _deployment: None,
            label="azure-openai",
        )
    if settings.openai_base_url is not None:
        return HttpUpstream(
            session=_upstream_session(settings),
            url_for=openai_compatible_url(str(settings.openai_base_url)),
            auth_headers=_openai_compatible_auth(settings),
            model_for=ModelMap(settings.deployment_models),
        )
    log.warning("No upstream configured (AZURE_OPENAI_ENDPOINT / OPENAI_BASE_URL): serving the offline model")
    return OfflineModel()


def model_calls_upstream(settings: Settings, upstream: Upstream) -> Upstream:
    """The upstream of the service's own calls (eval candidates, graders, embeddings): on Azure OpenAI the GA
    v1 routes with the deployment as `model` (same connections and sign-in as the proxy's)."""
    if settings.azure_openai_endpoint is not None and isinstance(upstream, HttpUpstream):
        return replace(
            upstream,
            url_for=azure_openai_v1_url(str(settings.azure_openai_endpoint)),
            model_for=lambda deployment: deployment,
        )
    return upstream


def build_fine_tuning_api(settings: Settings, credential: AsyncTokenCredential) -> FineTuningApi | None:
    """The upstream's files and fine-tuning API; None for the offline model, which cannot train."""
    if settings.azure_openai_endpoint is not None:
        return FineTuningApi(
            session=_upstream_session(settings),
            base_url=str(settings.azure_openai_endpoint).rstrip("/") + "/openai/v1",
            auth_headers=_azure_auth(settings, credential),
            azure=True,
        )
    if settings.openai_base_url is not None:
        return FineTuningApi(
            session=_upstream_session(settings),
            base_url=str(settings.openai_base_url),
            auth_headers=_openai_compatible_auth(settings),
            azure=False,
        )
    return None


def build_control_plane(settings: Settings, credential: AsyncTokenCredential) -> ControlPlane | None:
    """Azure OpenAI's control plane for deploying fine-tuned models; None without an Azure OpenAI account id."""
    if settings.azure_openai_endpoint is None or settings.azure_openai_resource_id is None:
        return None
    return ControlPlane(
        credential=credential,
        account=AccountId.parse(settings.azure_openai_resource_id),
        endpoint=str(settings.azure_resource_manager_endpoint).rstrip("/"),
    )


def missing_control_plane(settings: Settings) -> str:
    """Why fine-tuned models cannot be deployed from here, and what to do instead, in words."""
    register = 'or register a deployment that already serves the model: {"name": "<deployment>", "existing": true}.'
    if settings.azure_openai_endpoint is not None:
        return (
            "Deploying a fine-tuned model needs the Azure OpenAI account's resource id: set AZURE_OPENAI_RESOURCE_ID "
            "(/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>) and "
            "give the app's identity 'Cognitive Services OpenAI Contributor' on that account (the Bicep does both "
            f"when azureOpenAiResourceId and enableFineTuning are given); {register}"
        )
    if settings.openai_base_url is not None:
        return (
            "This upstream is OpenAI-compatible (OPENAI_BASE_URL): Distillery can only create deployments on Azure "
            "OpenAI (AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_RESOURCE_ID). Serve the fine-tuned model there yourself "
            f"and register it, {register}"
        )
    return (
        "The offline model has no deployments to create: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_RESOURCE_ID, "
        f"{register}"
    )


def _openai_compatible_auth(settings: Settings) -> Any:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    headers = {"authorization": f"Bearer {key}"} if key else {}

    async def static_headers() -> dict[str, str]:
        return headers

    return static_headers


def _azure_auth(settings: Settings, credential: AsyncTokenCredential) -> Any:
    if settings.azure_openai_api_key is not None:
        key_headers = {"api-key": settings.azure_openai_api_key.get_secret_value()}

        async def key_auth() -> dict[str, str]:
            return key_headers

        return key_auth
    token_provider = get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE)

    async def entra_auth() -> dict[str, str]:
        try:
            token = await token_provider()
        except AzureError as exc:
            log.error("Cannot call Azure OpenAI: %s (%s)", credential_problem(settings), type(exc).__name__)
            raise UpstreamUnavailable(
                "The upstream model could not be reached: this service could not sign in to it."
            ) from exc
        return {"authorization": f"Bearer {token}"}

    return entra_auth


_services: Services | None = None


def get_services() -> Services:
    """The worker's services, built on first use from the validated settings."""
    global _services
    if _services is None:
        _services = Services(get_settings())
    return _services
