"""Azure OpenAI's control plane: deployments of fine-tuned models on the upstream account, through
Azure Resource Manager (`azure-mgmt-cognitiveservices`) with the app's own identity.

A fine-tuned model is deployed like any other: `PUT .../Microsoft.CognitiveServices/accounts/{account}/
deployments/{name}` with `{"sku": {"name", "capacity"}, "properties": {"model": {"format": "OpenAI",
"name": <fine-tuned model>, "version": "1"}}}` (learn.microsoft.com/azure/foundry/openai/how-to/fine-tuning,
"Deploy the fine-tuned model"). The PUT answers at once with `provisioningState` `Creating` (or
`Accepted`); we never hold a worker on the long-running operation, but read the deployment again on
request and on a timer until it is `Succeeded` or `Failed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.cognitiveservices.aio import CognitiveServicesManagementClient
from azure.mgmt.cognitiveservices.models import Deployment, DeploymentModel, DeploymentProperties, Sku

from shared.platform.errors import DistilleryError

TERMINAL_STATES = frozenset({"Succeeded", "Failed", "Canceled", "Disabled"})
DEPLOYER_ROLE = "Cognitive Services OpenAI Contributor"
"""The least built-in role that both fine-tunes and creates deployments on an Azure OpenAI account
("Create new model deployments or edit existing model deployments", learn.microsoft.com/azure/
ai-foundry/openai/how-to/role-based-access-control); Cognitive Services OpenAI User cannot."""


class ControlPlaneError(DistilleryError):
    """Azure Resource Manager failed a deployment call (5xx, unreachable): a server-side failure."""

    status = 502
    type = "server_error"
    default_code = "control_plane_error"


class ControlPlaneRefused(ControlPlaneError):
    """Azure refused the request (name, SKU, capacity, quota): the caller's to fix; Azure's code passes through."""

    status = 400
    type = "invalid_request_error"


class ControlPlaneDenied(ControlPlaneError):
    """Azure refused the app's identity."""

    status = 403
    type = "permission_error"


class ControlPlaneConflict(ControlPlaneError):
    status = 409
    type = "invalid_request_error"


class ControlPlaneThrottled(ControlPlaneError):
    status = 429
    type = "invalid_request_error"
    retryable = True


@dataclass(frozen=True)
class AccountId:
    subscription: str
    resource_group: str
    account: str

    @classmethod
    def parse(cls, resource_id: str) -> AccountId:
        """`/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.CognitiveServices/accounts/{a}`."""
        parts = resource_id.strip("/").split("/")
        return cls(subscription=parts[1], resource_group=parts[3], account=parts[7])


@dataclass(frozen=True)
class DeploymentState:
    name: str
    model: str | None
    sku: str | None
    capacity: int | None
    provisioning_state: str


class ControlPlane:
    """Deployments on one Azure OpenAI account."""

    def __init__(self, *, credential: AsyncTokenCredential, account: AccountId, endpoint: str) -> None:
        self.account = account
        self._client = CognitiveServicesManagementClient(credential, account.subscription, base_url=endpoint)
        # Bearer tokens only ever travel over TLS, except to a local stand-in of Resource Manager (tests).
        self._options: dict[str, Any] = {} if endpoint.lower().startswith("https://") else {"enforce_https": False}

    async def create(self, name: str, *, model: str, sku: str, capacity: int) -> DeploymentState:
        body = Deployment(
            sku=Sku(name=sku, capacity=capacity),
            properties=DeploymentProperties(model=DeploymentModel(format="OpenAI", name=model, version="1")),
        )
        try:
            poller = await self._client.deployments.begin_create_or_update(
                self.account.resource_group, self.account.account, name, body, polling=False, **self._options
            )
            return _state(await poller.result())
        except HttpResponseError as exc:
            raise _failure(exc, f"Azure refused to create deployment '{name}'") from None

    async def get(self, name: str) -> DeploymentState | None:
        """The deployment as Azure has it now; None when it does not exist."""
        try:
            return _state(
                await self._client.deployments.get(
                    self.account.resource_group, self.account.account, name, **self._options
                )
            )
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            raise _failure(exc, f"Azure could not read deployment '{name}'") from None

    async def delete(self, name: str) -> None:
        """Delete the deployment (one already gone counts as deleted)."""
        try:
            poller = await self._client.deployments.begin_delete(
                self.account.resource_group, self.account.account, name, polling=False, **self._options
            )
            await poller.result()
        except ResourceNotFoundError:
            return
        except HttpResponseError as exc:
            raise _failure(exc, f"Azure refused to delete deployment '{name}'") from None

    async def close(self) -> None:
        await self._client.close()


def _state(deployment: Deployment) -> DeploymentState:
    properties = deployment.properties
    model = properties.model if properties else None
    return DeploymentState(
        name=str(deployment.name),
        model=model.name if model else None,
        sku=deployment.sku.name if deployment.sku else None,
        capacity=deployment.sku.capacity if deployment.sku else None,
        provisioning_state=str((properties.provisioning_state if properties else None) or "Creating"),
    )


def _failure(exc: HttpResponseError, what: str) -> ControlPlaneError:
    code = exc.error.code if exc.error is not None else None
    message = exc.error.message if exc.error is not None and exc.error.message else exc.reason or str(exc)
    status = exc.status_code
    hint = ""
    if status in (401, 403):
        hint = f" Assign '{DEPLOYER_ROLE}' on the Azure OpenAI account to the app's managed identity."
    elif code and "quota" in code.lower():
        hint = (
            " Free quota for this model and SKU on the account (delete a deployment), ask for more, or deploy "
            "with a smaller capacity or another SKU."
        )
    kind = {
        401: ControlPlaneDenied,
        403: ControlPlaneDenied,
        409: ControlPlaneConflict,
        429: ControlPlaneThrottled,
    }.get(status or 0, ControlPlaneRefused if status is not None and 400 <= status < 500 else ControlPlaneError)
    return kind(f"{what}: {message} (HTTP {status}, {code}).{hint}", code=code)
