"""How every upstream stand-in runs: a Starlette app served by uvicorn in a daemon thread of the test
process, on a free loopback port; and the App Service managed-identity endpoint the Azure ones sign
the app in with."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from local_host.azurite import free_port


class LoopbackServer:
    """A stand-in's server; a subclass names its routes."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def start(self) -> Self:
        config = uvicorn.Config(Starlette(routes=self._routes()), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None, "stop() before start()"
        self._server.should_exit = True
        self._thread.join(timeout=5)


class ManagedIdentity:
    """App Service's managed-identity endpoint (`/msi/token`), as `ManagedIdentityCredential` reads it: it
    hands out the bearer token the stand-in then requires."""

    def __init__(self, url: str) -> None:
        self.endpoint = f"{url}/msi/token"
        self.header = secrets.token_hex(8)
        self._token = secrets.token_hex(16)

    @property
    def environment(self) -> dict[str, str]:
        """What App Service / Functions set for a managed identity."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}

    @property
    def route(self) -> Route:
        return Route("/msi/token", self._token_for_identity, methods=["GET"])

    def signed_in(self, request: Request) -> bool:
        """The request carries the token this endpoint handed out."""
        return request.headers.get("authorization") == f"Bearer {self._token}"

    async def _token_for_identity(self, request: Request) -> Response:
        if request.headers.get("x-identity-header") != self.header:
            return JSONResponse({"error": "invalid_request", "error_description": "bad identity header"}, 400)
        return JSONResponse(
            {
                "access_token": self._token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query_params.get("resource"),
                "token_type": "Bearer",
            }
        )
