"""The service's own Azure identity: the credential every client signs in with, and what to fix when it can't."""

from __future__ import annotations

from azure.core.credentials import TokenCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity import DefaultAzureCredential as SyncDefaultAzureCredential
from azure.identity import ManagedIdentityCredential as SyncManagedIdentityCredential
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from shared.platform.settings import CredentialKind, Settings

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
STORAGE_SCOPE = "https://storage.azure.com/.default"
SERVICE_BUS_SCOPE = "https://servicebus.azure.net/.default"


def build_credential(settings: Settings) -> AsyncTokenCredential:
    """Managed identity in Azure (never silently another credential); developer sign-ins locally."""
    if settings.credential is CredentialKind.MANAGED_IDENTITY:
        return ManagedIdentityCredential(client_id=settings.azure_client_id)
    return DefaultAzureCredential(exclude_managed_identity_credential=True)


def build_sync_credential(settings: Settings) -> TokenCredential:
    """The same credential as `build_credential`, synchronous: the Azure Monitor exporter needs one."""
    if settings.credential is CredentialKind.MANAGED_IDENTITY:
        return SyncManagedIdentityCredential(client_id=settings.azure_client_id)
    return SyncDefaultAzureCredential(exclude_managed_identity_credential=True)


def credential_problem(settings: Settings) -> str:
    """What to fix when the configured credential cannot get a token."""
    if settings.credential is CredentialKind.MANAGED_IDENTITY:
        return (
            f"the managed identity (AZURE_CLIENT_ID={settings.azure_client_id or 'unset, so system-assigned'}) "
            "could not get a token; check that it is assigned to the app and that AZURE_CLIENT_ID is its client id"
        )
    return "no developer credential could get a token; sign in with 'az login' or set DISTILLERY_CREDENTIAL"
