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
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.loopback import LoopbackServer, ManagedIdentity

MAX_DOCUMENTS = 5
MAX_DOCUMENT_CHARS = 5120


class FakeLanguage(LoopbackServer):
    def __init__(self) -> None:
        super().__init__("fake Azure AI Language")
        self.identity = ManagedIdentity(self.url)
        self.entities: dict[str, str] = {}
        """Value -> PII category (`Email`, `Person`, ...) the stand-in finds wherever the value occurs."""
        self.requests: list[dict[str, Any]] = []
        self.failing = False
        """Answer every analysis with 503, as a service in trouble does."""

    def _routes(self) -> list[BaseRoute]:
        return [self.identity.route, Route("/language/:analyze-text", self._analyze, methods=["POST"])]

    def reset(self) -> None:
        self.entities.clear()
        self.requests.clear()
        self.failing = False

    async def _analyze(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append({"query": dict(request.query_params), "body": body, "headers": dict(request.headers)})
        if not self.identity.signed_in(request):
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
