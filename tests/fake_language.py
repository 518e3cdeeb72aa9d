"""A stand-in for Azure AI Language's PII detection on a loopback port, with the managed-identity
endpoint that signs the app in (as `tests/fake_control_plane.py` has it).

It speaks the REST shape the real `azure-ai-textanalytics` client sends and reads (API 2023-04-01):
`POST /language/:analyze-text?api-version=...` with `{"kind": "PiiEntityRecognition", "analysisInput":
{"documents": [{"id", "text", "language"}]}, "parameters": {"piiCategories", "stringIndexType",
"loggingOptOut", "modelVersion"}}`, answered `{"kind": "PiiEntityRecognitionResults", "results":
{"documents": [{"id", "redactedText", "entities": [{"text", "category", "offset", "length",
"confidenceScore"}], "warnings"}], "errors": [...], "modelVersion"}}`. Its limits are the service's: at most
5 documents a request (400 `InvalidDocumentBatch`) and 5,120 characters a document (a per-document
`InvalidDocument` error). What it "detects" is scripted: each value in `entities` wherever it occurs.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from local_host.azurite import free_port

MAX_DOCUMENTS = 5
MAX_DOCUMENT_CHARS = 5120


class FakeLanguage:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.identity_header = secrets.token_hex(8)
        self._token = secrets.token_hex(16)
        self.entities: dict[str, str] = {}
        """Value -> PII category (`Email`, `Person`, ...) the stand-in finds wherever the value occurs."""
        self.requests: list[dict[str, Any]] = []
        self.failing = False
        """Answer every analysis with 503, as a service in trouble does."""
        app = Starlette(
            routes=[
                Route("/msi/token", self._token_for_identity, methods=["GET"]),
                Route("/language/:analyze-text", self._analyze, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeLanguage:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Azure AI Language did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def reset(self) -> None:
        self.entities.clear()
        self.requests.clear()
        self.failing = False

    @property
    def identity_environment(self) -> dict[str, str]:
        """What App Service / Functions set for a managed identity (read by `ManagedIdentityCredential`)."""
        return {"IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": self.identity_header}

    async def _token_for_identity(self, request: Request) -> Response:
        if request.headers.get("x-identity-header") != self.identity_header:
            return JSONResponse({"error": "invalid_request", "error_description": "bad identity header"}, 400)
        return JSONResponse(
            {
                "access_token": self._token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query_params.get("resource"),
                "token_type": "Bearer",
            }
        )

    async def _analyze(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append({"query": dict(request.query_params), "body": body, "headers": dict(request.headers)})
        if request.headers.get("authorization") != f"Bearer {self._token}":
            return _error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        if self.failing:
            return _error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
        if not request.query_params.get("api-version") or body.get("kind") != "PiiEntityRecognition":
            return _error(400, "InvalidRequest", "Invalid Request.")
        documents = body["analysisInput"]["documents"]
        if len(documents) > MAX_DOCUMENTS:
            return _error(
                400,
                "InvalidRequest",
                "Invalid document in request.",
                inner=("InvalidDocumentBatch", "Batch request contains too many records. Max 5 records are permitted."),
            )
        categories = set((body.get("parameters") or {}).get("piiCategories") or [])
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for document in documents:
            text = document["text"]
            if len(text) > MAX_DOCUMENT_CHARS:
                errors.append(_document_error(document["id"]))
                continue
            entities = [
                {"text": value, "category": category, "offset": at, "length": len(value), "confidenceScore": 0.9}
                for value, category in self.entities.items()
                if not categories or category in categories
                for at in _occurrences(text, value)
            ]
            redacted = list(text)
            for entity in entities:
                redacted[entity["offset"] : entity["offset"] + entity["length"]] = "*" * entity["length"]
            results.append(
                {"id": document["id"], "redactedText": "".join(redacted), "entities": entities, "warnings": []}
            )
        return JSONResponse(
            {
                "kind": "PiiEntityRecognitionResults",
                "results": {"documents": results, "errors": errors, "modelVersion": "2021-01-15"},
            }
        )


def _occurrences(text: str, value: str) -> list[int]:
    found, at = [], text.find(value)
    while at >= 0:
        found.append(at)
        at = text.find(value, at + len(value))
    return found


def _document_error(document_id: str) -> dict[str, Any]:
    return {
        "id": document_id,
        "error": {
            "code": "InvalidArgument",
            "message": "Invalid Document in request.",
            "innererror": {
                "code": "InvalidDocument",
                "message": "A document within the request was too large to be processed. Limit document size to: "
                "5120 text elements.",
            },
        },
    }


def _error(status: int, code: str, message: str, *, inner: tuple[str, str] | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner[0], "message": inner[1]}
    return JSONResponse({"error": error}, status_code=status)
