"""The app's one settings object, read from the environment (app settings in Azure).

Every field's alias is the exact app-setting name, the same key the Bicep `appSettings` block and
`local.settings.json.template` use, so a setting has one name everywhere.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from typing import Annotated, Any

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigurationError


class CredentialKind(StrEnum):
    """Which Entra ID credential the app uses for Azure resources it reaches without a key."""

    MANAGED_IDENTITY = "managed_identity"
    DEVELOPER = "developer"


class Settings(BaseSettings):
    """Validated configuration; see the README's configuration table for each setting's purpose."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

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

    datasets_container: str = Field("datasets", alias="DATASETS_CONTAINER")
    """Blob container for dataset job records, JSONL files and manifests (`<dataset id>/...`)."""
    dataset_chunk_seconds: float = Field(240.0, gt=0, alias="DATASET_CHUNK_SECONDS")
    """Time one delivery works on a dataset before it checkpoints and queues a continuation."""
    dataset_chunk_completions: int = Field(100_000, ge=1, alias="DATASET_CHUNK_COMPLETIONS")
    """Most stored completions one delivery reads before it checkpoints and queues a continuation."""
    dataset_read_concurrency: int = Field(32, ge=1, le=256, alias="DATASET_READ_CONCURRENCY")
    """Stored completions read at once while building a dataset."""
    dataset_max_example_tokens: int = Field(65_536, ge=1, alias="DATASET_MAX_EXAMPLE_TOKENS")
    """Fine-tuning examples longer than this (tokens) are skipped, as the fine-tuning service rejects them."""
    dataset_max_delivery_count: int = Field(5, ge=1, alias="DATASET_MAX_DELIVERY_COUNT")
    """The dataset queue's max delivery count: on that delivery a failing job is marked failed."""

    @field_validator("deployment_models", mode="before")
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

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.storage_connection_string is None and self.storage_account_name is None:
            raise ValueError(
                "set AzureWebJobsStorage (a connection string, e.g. for Azurite) "
                "or AzureWebJobsStorage__accountName (identity-based, in Azure)"
            )
        if self.azure_openai_endpoint is not None and self.openai_base_url is not None:
            raise ValueError("set AZURE_OPENAI_ENDPOINT or OPENAI_BASE_URL, not both")
        return self


def load_settings() -> Settings:
    """Read and validate the environment, turning pydantic's report into one actionable message."""
    try:
        return Settings()  # type: ignore[call-arg]
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
