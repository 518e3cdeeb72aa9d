"""The app's one settings object, read from the environment (app settings in Azure).

Every field's alias is the exact app-setting name, the same key the Bicep `appSettings` block and
`local.settings.json.template` use, so a setting has one name everywhere.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.platform.access import DEFAULT_KEY_NAME, EMPTY_KEY_DIGEST, ServiceKey
from shared.platform.errors import ConfigurationError


class Price(BaseModel):
    """One `PRICE_TABLE` entry: what a model or deployment costs, in the table's one currency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    """Per 1M input (prompt) tokens."""
    cached_input: float | None = Field(None, ge=0)
    """Per 1M cached input tokens; unset: the `input` price."""
    output: float = Field(ge=0)
    """Per 1M output (completion) tokens."""
    hourly: float = Field(0, ge=0)
    """Hosting fee per hour (a fine-tuned deployment's), whether it serves or not."""


class CredentialKind(StrEnum):
    """Which Entra ID credential the app uses for Azure resources it reaches without a key."""

    MANAGED_IDENTITY = "managed_identity"
    DEVELOPER = "developer"


class QuotaMode(StrEnum):
    """What a `store: true` request gets once the store is at its cap."""

    SERVE_UNSTORED = "serve_unstored"
    """Answer it, do not keep it, and say so in `x-distillery-not-stored-reason: quota_exceeded`."""
    REJECT = "reject"
    """Refuse it with 429 `storage_quota_exceeded` before any upstream call."""


class TelemetryExporter(StrEnum):
    """Where traces and metrics go (shared/platform/telemetry.py)."""

    OFF = "off"
    CONSOLE = "console"
    """One JSON object a line on stdout."""
    OTLP = "otlp"
    """OTLP over HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` (a collector, the Aspire dashboard, Jaeger)."""
    AZURE_MONITOR = "azure_monitor"
    """Application Insights, with the app's credential (needs APPLICATIONINSIGHTS_CONNECTION_STRING)."""


class RedactionMode(StrEnum):
    """What happens to personal data found in a completion before it is stored (shared/redaction)."""

    OFF = "off"
    MASK = "mask"
    """Each finding becomes its kind: `[EMAIL]`."""
    PSEUDONYMIZE = "pseudonymize"
    """Each finding becomes its kind and a keyed hash of the value, `[EMAIL_3f9a0c1d]`: the same value always
    gets the same placeholder, so a conversation stays coherent for training."""


class EntityKind(StrEnum):
    """A kind of personal data redaction looks for; its name is the placeholder's (`[EMAIL]`)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    IP_ADDRESS = "IP_ADDRESS"
    URL = "URL"
    US_SSN = "US_SSN"
    US_BANK_ACCOUNT = "US_BANK_ACCOUNT"
    US_PASSPORT = "US_PASSPORT"
    US_DRIVER_LICENSE = "US_DRIVER_LICENSE"
    PERSON = "PERSON"
    """Azure AI Language only, as are ADDRESS and ORGANIZATION: finding them takes a language model."""
    ADDRESS = "ADDRESS"
    ORGANIZATION = "ORGANIZATION"


LANGUAGE_ONLY_KINDS = frozenset({EntityKind.PERSON, EntityKind.ADDRESS, EntityKind.ORGANIZATION})
"""Kinds the offline detector cannot find."""

DEFAULT_REDACTION_ENTITIES = "EMAIL,PHONE,CREDIT_CARD,IBAN,IP_ADDRESS,US_SSN"
"""Kinds both detectors find."""


class Settings(BaseSettings):
    """Validated configuration; see the README's configuration table for each setting's purpose."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True, env_ignore_empty=True)

    storage_connection_string: SecretStr | None = Field(None, alias="AzureWebJobsStorage")
    """Connection string for local runs (Azurite); Azure uses the identity-based account name."""
    storage_account_name: str | None = Field(None, alias="AzureWebJobsStorage__accountName")
    azure_client_id: str | None = Field(None, alias="AZURE_CLIENT_ID")
    """Client id of the user-assigned managed identity."""
    credential: CredentialKind = Field(CredentialKind.DEVELOPER, alias="DISTILLERY_CREDENTIAL")

    service_bus_namespace: str | None = Field(None, alias="ServiceBusConnection__fullyQualifiedNamespace")
    """Service Bus namespace host for job queues; unset locally, where Azurite queues stand in."""
    dataset_jobs_queue: str = Field("dataset-jobs", alias="DATASET_JOBS_QUEUE")
    purge_jobs_queue: str = Field("purge-jobs", alias="PURGE_JOBS_QUEUE")
    completion_events_queue: str = Field("completion-events", alias="COMPLETION_EVENTS_QUEUE")
    """Queue of blob-created events (Event Grid in Azure, the local host locally) the index is built from."""
    index_sweep_grace_seconds: int = Field(60, ge=0, le=3600, alias="INDEX_SWEEP_GRACE_SECONDS")
    """Age at which the index sweep treats a document without index rows as missed by its event."""

    completions_container: str = Field("completions", alias="COMPLETIONS_CONTAINER")
    completion_index_table: str = Field("completionindex", alias="COMPLETION_INDEX_TABLE")

    azure_openai_endpoint: AnyHttpUrl | None = Field(None, alias="AZURE_OPENAI_ENDPOINT")
    azure_openai_api_key: SecretStr | None = Field(None, alias="AZURE_OPENAI_API_KEY")
    azure_openai_api_version: str = Field("2024-10-21", alias="AZURE_OPENAI_API_VERSION")
    openai_base_url: AnyHttpUrl | None = Field(None, alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(None, alias="OPENAI_API_KEY")
    deployment_models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, alias="DISTILLERY_DEPLOYMENT_MODELS"
    )
    """Deployment name -> model name sent to an OpenAI-compatible upstream (JSON object)."""
    upstream_timeout_seconds: float = Field(120.0, gt=0, alias="UPSTREAM_TIMEOUT_SECONDS")
    upstream_max_connections: int = Field(100, ge=1, alias="UPSTREAM_MAX_CONNECTIONS")

    api_key: SecretStr | None = Field(None, alias="DISTILLERY_API_KEY")
    """The full-rights key for local runs and single-tenant set-ups."""
    store_enabled: bool = Field(True, alias="DISTILLERY_STORE_ENABLED")
    """Off: every request is served and nothing is kept, whatever `store` says."""

    reports_container: str = Field("reports", alias="REPORTS_CONTAINER")
    """Where the quota and permission reports are written as JSON."""
    datasets_container: str = Field("datasets", alias="DATASETS_CONTAINER")
    """Dataset files; counted towards the storage quota."""
    storage_quota_bytes: int = Field(10 * 1024**3, ge=1, alias="STORAGE_QUOTA_BYTES")
    """The store's cap in bytes: completions plus dataset files (default 10 GiB = 10 * 1024**3)."""
    storage_quota_mode: QuotaMode = Field(QuotaMode.SERVE_UNSTORED, alias="STORAGE_QUOTA_MODE")
    owner_quota_bytes: int = Field(0, ge=0, alias="OWNER_QUOTA_BYTES")
    """Cap on the completion bytes one owner (caller identity) stores; 0 turns per-owner quotas off."""
    max_stored_document_bytes: int = Field(6 * 1024 * 1024, ge=1024, alias="MAX_STORED_DOCUMENT_BYTES")
    """Larger serialized completions are answered but not stored (`document_too_large`)."""
    document_read_budget_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, alias="DOCUMENT_READ_BUDGET_BYTES")
    """Bytes of stored documents one worker reads and holds at once (lists, builds, purges, retention, evals)."""
    price_table: Annotated[dict[str, Price], NoDecode] = Field(default_factory=dict, alias="PRICE_TABLE")
    """Model or deployment name -> its prices (JSON object); the quota report turns token usage into money with it."""
    quota_top_values: int = Field(10, ge=1, le=100, alias="QUOTA_TOP_VALUES")
    """Values listed per metadata key in the quota report; the rest are summed into `other`."""
    retention_days: int = Field(0, ge=0, alias="RETENTION_DAYS")
    """Completions captured longer ago than this are deleted by the retention sweep; 0 keeps them all."""
    permission_probe_deployment: str | None = Field(None, alias="PERMISSION_PROBE_DEPLOYMENT")
    """Deployment the permission report calls with `max_tokens: 1`; unset skips the upstream call."""

    # Access control and request limits.
    api_keys: Annotated[list[ServiceKey], NoDecode] = Field(default_factory=list, alias="DISTILLERY_API_KEYS")
    """Service keys: a JSON list of `{"name", "sha256", "rights"}`; only key digests are configured."""
    trust_app_service_auth: bool = Field(False, alias="DISTILLERY_TRUST_APP_SERVICE_AUTH")
    """True only behind App Service Authentication, which sets (and strips forged) `X-MS-CLIENT-PRINCIPAL`."""
    owner_scoping: bool = Field(False, alias="DISTILLERY_OWNER_SCOPING")
    """Callers without `stored-completions/all-owners` see only the completions they stored."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, alias="DISTILLERY_MAX_BODY_BYTES")
    """Larger request bodies are refused with 413 before anything is forwarded."""
    dataset_chunk_seconds: float = Field(240.0, gt=0, alias="DATASET_CHUNK_SECONDS")
    """Time one delivery works on a dataset before it checkpoints and queues a continuation."""
    dataset_chunk_completions: int = Field(100_000, ge=1, alias="DATASET_CHUNK_COMPLETIONS")
    """Most stored completions one delivery reads before it checkpoints and queues a continuation."""
    dataset_slice_completions: int = Field(10_000, ge=1, alias="DATASET_SLICE_COMPLETIONS")
    """A filter selection with more completions than this is built in slices of this many, one queue message
    each, so instances build them in parallel."""
    dataset_read_concurrency: int = Field(32, ge=1, le=256, alias="DATASET_READ_CONCURRENCY")
    """Stored completions read at once while building a dataset."""
    dataset_max_example_tokens: int = Field(65_536, ge=1, alias="DATASET_MAX_EXAMPLE_TOKENS")
    """Fine-tuning examples longer than this (tokens) are skipped, as the fine-tuning service rejects them."""
    dataset_max_delivery_count: int = Field(5, ge=1, alias="DATASET_MAX_DELIVERY_COUNT")
    """The dataset queue's max delivery count: on that delivery a failing job is marked failed."""

    # Evals (shared/evals).
    evals_container: str = Field("evals", alias="EVALS_CONTAINER")
    """Evals, runs and graded output items."""
    eval_jobs_queue: str = Field("eval-jobs", alias="EVAL_JOBS_QUEUE")
    eval_concurrency: int = Field(8, ge=1, le=64, alias="EVAL_CONCURRENCY")
    """Items of a run answered and graded at once (each may call the upstream several times)."""
    eval_chunk_seconds: float = Field(240.0, gt=0, alias="EVAL_CHUNK_SECONDS")
    """Time one delivery grades before it checkpoints and queues a continuation."""
    eval_max_delivery_count: int = Field(5, ge=1, alias="EVAL_MAX_DELIVERY_COUNT")
    """The eval queue's max delivery count: on that delivery a failing run is marked failed."""
    eval_default_token_cap: int = Field(2_000_000, ge=1, alias="EVAL_DEFAULT_TOKEN_CAP")
    """Tokens a run may use (candidate and grader calls) unless it sets `max_total_tokens`."""
    eval_embeddings_deployment: str = Field("text-embedding-3-large", alias="EVAL_EMBEDDINGS_DEPLOYMENT")
    """The embeddings deployment the `cosine` text-similarity grader calls."""
    eval_max_compared_chars: int = Field(20_000, ge=100, le=1_000_000, alias="EVAL_MAX_COMPARED_CHARS")
    """Longest text a `text_similarity` metric compares; a longer pair is an `error` result (ROUGE is quadratic)."""
    eval_metric_timeout_seconds: float = Field(30.0, gt=0, le=600, alias="EVAL_METRIC_TIMEOUT_SECONDS")
    """Longest one text-similarity score may take in the metric process pool before it is an `error` result."""
    model_call_max_attempts: int = Field(5, ge=1, le=20, alias="MODEL_CALL_MAX_ATTEMPTS")
    """Tries of one eval or grader call through 429s and 5xx, honouring the upstream's retry-after."""

    # Fine-tuning (shared/fine_tuning).
    fine_tuning_container: str = Field("finetuning", alias="FINE_TUNING_CONTAINER")
    """Fine-tuning job records."""
    fine_tuning_jobs_queue: str = Field("fine-tuning-jobs", alias="FINE_TUNING_JOBS_QUEUE")
    fine_tuning_delivery_seconds: float = Field(240.0, gt=0, lt=600, alias="FINE_TUNING_DELIVERY_SECONDS")
    """Time one delivery works (check, upload, wait for processing), counted from its start, before the rest
    goes on in a new message. Under 600: host.json's Service Bus `maxAutoLockRenewalDuration` is 10 minutes,
    and a delivery that outlived its lock would be handed to a second worker while still running."""
    fine_tuning_max_delivery_count: int = Field(5, ge=1, alias="FINE_TUNING_MAX_DELIVERY_COUNT")
    """The fine-tuning queue's max delivery count: on that delivery a failing preparation is marked failed."""
    azure_openai_resource_id: str | None = Field(
        None,
        alias="AZURE_OPENAI_RESOURCE_ID",
        pattern=r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+$",
    )
    """The upstream Azure OpenAI account's resource id: where fine-tuned models are deployed (control plane)."""
    azure_resource_manager_endpoint: AnyHttpUrl = Field(
        AnyHttpUrl("https://management.azure.com"), alias="AZURE_RESOURCE_MANAGER_ENDPOINT"
    )
    """Azure Resource Manager (another cloud's, or a local stand-in in tests)."""
    fine_tuning_deployment_sku: str = Field("DeveloperTier", min_length=1, alias="FINE_TUNING_DEPLOYMENT_SKU")
    """SKU of a fine-tuned model's deployment unless the request names one: Developer tier has no hosting fee."""
    fine_tuning_deployment_capacity: int = Field(50, ge=1, alias="FINE_TUNING_DEPLOYMENT_CAPACITY")
    """Capacity (thousands of tokens per minute) of that deployment unless the request names one."""
    comparison_judge_deployment: str | None = Field(None, min_length=1, alias="COMPARISON_JUDGE_DEPLOYMENT")
    """The deployment of the `score_model` judge the automatic student/teacher comparison adds; unset: no judge."""

    # Aliases (shared/aliases).
    aliases_container: str = Field("aliases", alias="ALIASES_CONTAINER")
    """Alias records: targets, shares, gate and history of changes."""
    alias_cache_seconds: float = Field(10.0, gt=0, le=3600, alias="ALIAS_CACHE_SECONDS")
    """How long a worker answers alias lookups from memory before it reads the alias again (in the background)."""
    online_evals_queue: str = Field("online-evals", alias="ONLINE_EVALS_QUEUE")
    """Queue of an alias's sampled calls to grade online (`shared/aliases/online.py`)."""

    # Redaction at capture (shared/redaction).
    redaction: RedactionMode = Field(RedactionMode.OFF, alias="REDACTION")
    redaction_entities: Annotated[list[EntityKind], NoDecode] = Field(
        default_factory=lambda: [EntityKind(name) for name in DEFAULT_REDACTION_ENTITIES.split(",")],
        alias="REDACTION_ENTITIES",
    )
    """Comma-separated kinds to redact (README: Redaction); PERSON, ADDRESS and ORGANIZATION need Azure AI Language."""
    redaction_key: SecretStr | None = Field(None, alias="REDACTION_KEY")
    """The HMAC key of `pseudonymize` placeholders (a Key Vault reference in Azure); changing it changes every one."""
    redaction_metadata: bool = Field(False, alias="REDACTION_METADATA")
    """Redact metadata values too (they are indexed and filtered on, so by default they are kept as sent)."""
    redaction_language_endpoint: AnyHttpUrl | None = Field(None, alias="REDACTION_LANGUAGE_ENDPOINT")
    """An Azure AI Language endpoint (its region's or the resource's custom domain): PII detection there, with the
    app's credential; the offline detector covers for it when it is unreachable and can find every kind asked for.
    Unset: the offline detector alone."""
    redaction_timeout_seconds: float = Field(10.0, gt=0, le=120, alias="REDACTION_TIMEOUT_SECONDS")
    """Longest wait for Azure AI Language before the completion is served unstored (`redaction_unavailable`)."""

    # Telemetry (shared/platform/telemetry.py).
    telemetry_exporter: TelemetryExporter | None = Field(None, alias="TELEMETRY_EXPORTER")
    """Unset: `azure_monitor` when APPLICATIONINSIGHTS_CONNECTION_STRING is set, else `off`."""
    applicationinsights_connection_string: SecretStr | None = Field(None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING")
    log_content: bool = Field(False, alias="LOG_CONTENT")
    """Debugging only: log the messages and answers of proxied calls (never on in production)."""

    @property
    def effective_telemetry_exporter(self) -> TelemetryExporter:
        if self.telemetry_exporter is not None:
            return self.telemetry_exporter
        if self.applicationinsights_connection_string is not None:
            return TelemetryExporter.AZURE_MONITOR
        return TelemetryExporter.OFF

    @field_validator("deployment_models", "price_table", mode="before")
    @classmethod
    def _parse_json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object ({exc.msg})") from None
        return value

    @field_validator("redaction_entities", mode="before")
    @classmethod
    def _parse_entity_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip().upper() for name in value.split(",") if name.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON list of {{name, sha256, rights}} objects ({exc.msg})") from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_distinct(cls, keys: list[ServiceKey]) -> list[ServiceKey]:
        names = [key.name for key in keys]
        if DEFAULT_KEY_NAME in names:
            raise ValueError(f"the name '{DEFAULT_KEY_NAME}' is reserved for DISTILLERY_API_KEY")
        if len(set(names)) != len(names):
            raise ValueError("key names must be unique")
        if len({key.sha256 for key in keys}) != len(keys):
            raise ValueError("two keys have the same sha256")
        for key in keys:
            if key.sha256 == EMPTY_KEY_DIGEST:
                raise ValueError(
                    f"the key '{key.name}' has the sha256 of the empty string (was $KEY unset when it was computed?); "
                    "an empty key would match it"
                )
        return keys

    @field_validator("api_key")
    @classmethod
    def _key_is_not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("must not be blank: an empty key would match it")
        return key

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.storage_connection_string is None and self.storage_account_name is None:
            raise ValueError(
                "set AzureWebJobsStorage (a connection string, e.g. for Azurite) "
                "or AzureWebJobsStorage__accountName (identity-based, in Azure)"
            )
        if self.azure_openai_endpoint is not None and self.openai_base_url is not None:
            raise ValueError("set AZURE_OPENAI_ENDPOINT or OPENAI_BASE_URL, not both")
        if (
            self.telemetry_exporter is TelemetryExporter.AZURE_MONITOR
            and self.applicationinsights_connection_string is None
        ):
            raise ValueError("TELEMETRY_EXPORTER=azure_monitor needs APPLICATIONINSIGHTS_CONNECTION_STRING")
        if self.redaction is not RedactionMode.OFF:
            if self.log_content:
                raise ValueError("LOG_CONTENT=true would log what REDACTION removes: turn one of them off")
            if self.redaction is RedactionMode.PSEUDONYMIZE and (
                self.redaction_key is None or len(self.redaction_key.get_secret_value()) < 16
            ):
                raise ValueError("REDACTION=pseudonymize needs REDACTION_KEY, a secret of at least 16 characters")
            if not self.redaction_entities:
                raise ValueError("REDACTION_ENTITIES names no kind to redact")
            needing_language = sorted(LANGUAGE_ONLY_KINDS.intersection(self.redaction_entities))
            if needing_language and self.redaction_language_endpoint is None:
                raise ValueError(
                    f"REDACTION_ENTITIES {', '.join(needing_language)} can only be found by Azure AI Language: "
                    "set REDACTION_LANGUAGE_ENDPOINT"
                )
        return self


def load_settings() -> Settings:
    """Read and validate the environment, turning pydantic's report into one actionable message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError("Invalid configuration - " + "; ".join(problems)) from None


@cache
def get_settings() -> Settings:
    """The process-wide settings, validated on first use (the app touches them at start-up)."""
    return load_settings()
