"""A stand-in for Azure's control plane on a loopback port: Azure Resource Manager's deployments of
an Azure OpenAI account, and the App Service managed-identity endpoint that signs the app in.

It speaks the real REST shapes, so the real `azure-mgmt-cognitiveservices` client and the real
`ManagedIdentityCredential` talk to it unchanged (pointed here by `AZURE_RESOURCE_MANAGER_ENDPOINT`
and the `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` variables App Service and Functions set):

- `PUT .../Microsoft.CognitiveServices/accounts/{account}/deployments/{name}` answers 201 with
  `properties.provisioningState: Creating` (ARM's long-running operation shape, `Azure-AsyncOperation`
  header); each later `GET` moves it on to `Succeeded`, or `Failed` for a model in `failing_models`.
- capacity beyond the SKU's free quota answers 400 `InsufficientQuota`, as Azure does;
- `DELETE` answers 200 (204 when there was nothing to delete); a missing deployment's `GET` is 404.
Shapes: azure-rest-api-specs, specification/cognitiveservices/resource-manager/Microsoft.CognitiveServices
(Deployments_CreateOrUpdate: 200/201; Deployments_Get: 200; Deployments_Delete: 200/202/204).
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.loopback import LoopbackServer, ManagedIdentity

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-distillery"
ACCOUNT = "aoai-teacher"
ACCOUNT_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.CognitiveServices/accounts/{ACCOUNT}"
_DEPLOYMENTS = (
    "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.CognitiveServices"
    "/accounts/{account}/deployments/{name}"
)


class FakeControlPlane(LoopbackServer):
    def __init__(self) -> None:
        super().__init__("fake control plane")
        self.identity = ManagedIdentity(self.url)
        self._lock = threading.Lock()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.quota: dict[str, int] = {}
        """Free capacity per SKU name (lower case); a SKU not listed has plenty."""
        self.failing_models: set[str] = set()

    def _routes(self) -> list[BaseRoute]:
        return [
            self.identity.route,
            Route(_DEPLOYMENTS, self._put, methods=["PUT"]),
            Route(_DEPLOYMENTS, self._get, methods=["GET"]),
            Route(_DEPLOYMENTS, self._delete, methods=["DELETE"]),
        ]

    def reset(self) -> None:
        with self._lock:
            self.deployments.clear()
            self.requests.clear()
            self.quota.clear()
            self.failing_models.clear()

    def _refused(self, request: Request) -> Response | None:
        path = request.url.path
        if not self.identity.signed_in(request):
            return _error(401, "AuthenticationFailed", "Authentication failed: no valid bearer token.")
        if not request.query_params.get("api-version"):
            return _error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if not path.startswith(f"{ACCOUNT_ID}/deployments/"):
            return _error(404, "ResourceNotFound", f"The Resource '{path}' was not found.")
        return None

    async def _put(self, request: Request) -> Response:
        body = json.loads(await request.body())
        name = request.path_params["name"]
        with self._lock:
            self.requests.append({"method": "PUT", "name": name, "body": body, "headers": dict(request.headers)})
        refused = self._refused(request)
        if refused is not None:
            return refused
        sku = body.get("sku") or {}
        model = ((body.get("properties") or {}).get("model")) or {}
        capacity, sku_name = int(sku.get("capacity") or 1), str(sku.get("name") or "")
        free = self.quota.get(sku_name.lower())
        if free is not None and capacity > free:
            return _error(
                400,
                "InsufficientQuota",
                f"This operation require {capacity} new capacity in quota Tokens Per Minute (thousands) - "
                f"{model.get('name')}-{sku_name}, which is bigger than the current available capacity {free}.",
            )
        if free is not None:
            self.quota[sku_name.lower()] = free - capacity
        existed = name in self.deployments
        self.deployments[name] = {
            "id": f"{ACCOUNT_ID}/deployments/{name}",
            "name": name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": {"name": sku_name, "capacity": capacity},
            "properties": {"model": model, "provisioningState": "Creating"},
        }
        operation = f"{self.url}/providers/Microsoft.CognitiveServices/operations/{secrets.token_hex(8)}"
        return JSONResponse(
            self.deployments[name], status_code=200 if existed else 201, headers={"Azure-AsyncOperation": operation}
        )

    async def _get(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            self.requests.append({"method": "GET", "name": name, "headers": dict(request.headers)})
        refused = self._refused(request)
        if refused is not None:
            return refused
        deployment = self.deployments.get(name)
        if deployment is None:
            return _error(404, "DeploymentNotFound", f"Deployment '{name}' not found.")
        properties = deployment["properties"]
        if properties["provisioningState"] == "Creating":  # provisioned by the first look after the PUT
            failed = properties["model"].get("name") in self.failing_models
            properties["provisioningState"] = "Failed" if failed else "Succeeded"
        return JSONResponse(deployment)

    async def _delete(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            self.requests.append({"method": "DELETE", "name": name, "headers": dict(request.headers)})
        refused = self._refused(request)
        if refused is not None:
            return refused
        return Response(status_code=200 if self.deployments.pop(name, None) is not None else 204)


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
