"""The one stand-in the tests use: a scriptable OpenAI-compatible upstream on a loopback port.

By default it answers like a tiny model (`fake: <last user text>`), streaming when asked. Tests push
scripted replies (errors, retry headers, tool calls, slow answers) that are used once, in order, and
read back every request it received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from shared.upstream import responses_wire
from tests.loopback import LoopbackServer

FAKE_MODEL = "fake-model-2025"


@dataclass
class Reply:
    """One scripted answer: a status with a JSON body, or (`chunks`) an SSE stream."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[dict[str, Any]] | None = None
    delay_seconds: float = 0.0
    message: dict[str, Any] | None = None
    """For a default-shaped completion with this assistant message (e.g. tool calls)."""
    finish_reason: str = "stop"
    hold_after_first_chunk: threading.Event | None = None
    """Stream the first chunk, then wait for this event before the rest (proves chunks are relayed live)."""
    hold: threading.Event | None = None
    """Wait for this event before answering (a test orders what happens while the call is out)."""
    for_path: str | None = None
    """Files and fine-tuning routes: answer only a request whose path ends so (others pass it by)."""
    for_model: str | None = None
    """Chat: answer only a request for this model or deployment (others, e.g. a background run, pass it by)."""
    function_calls: list[dict[str, str]] | None = None
    """Responses: answer with these function calls (`{"name", "arguments", "call_id"?}`) instead of text."""


def completion(request: dict[str, Any], message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": FAKE_MODEL,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def default_message(request: dict[str, Any]) -> dict[str, Any]:
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    text = users[-1].get("content") if users else ""
    return {"role": "assistant", "content": f"fake: {text}" if isinstance(text, str) else "fake: (parts)"}


def chunks_for(request: dict[str, Any], message: dict[str, Any], finish_reason: str) -> list[dict[str, Any]]:
    """Split a message into realistic chunks: role, content word by word, tool-call pieces, finish."""
    base = {
        "id": f"chatcmpl-fake-{time.time_ns()}",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": FAKE_MODEL,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    for i, word in enumerate((message.get("content") or "").split(" ") if message.get("content") else []):
        out.append(chunk({"content": word if i == 0 else " " + word}))
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
        }
        out.append(chunk({"tool_calls": [head]}))
        out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}))
    out.append(chunk({}, finish_reason))
    if (request.get("stream_options") or {}).get("include_usage"):
        out.append({**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    return out


class FakeUpstream(LoopbackServer):
    """Runs in a thread of the test process; the host under test reaches it over loopback."""

    def __init__(self) -> None:
        super().__init__("fake upstream")
        self.base_url = f"{self.url}/v1"
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        """Uploaded files by id, with their content (until deleted)."""
        self.deleted_files: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        """Fine-tuning jobs by id; each retrieve moves a job one status on (to succeeded)."""
        self.batches: dict[str, dict[str, Any]] = {}
        """Batches by id; each retrieve moves one on: validating -> in_progress -> completed.
        Each keeps its files' contents as `input`, `output`, `error` (the files may be deleted meanwhile)."""
        self.background: dict[str, dict[str, Any]] = {}
        """Background responses by id; each retrieve moves one on: queued -> in_progress -> its answer."""
        self.background_failure: dict[str, Any] | None = None
        """Set to an error (`code`, `message`): background responses created from now on end `failed` with it."""
        self.batch_failure: dict[str, Any] | None = None
        """Set to an error (`code`, `message`, `line`): the next batch fails its validation with it."""

    def _routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/openai/deployments/{deployment}/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            # Files and fine-tuning: OpenAI's `/v1/...` and Azure OpenAI's v1 API, `/openai/v1/...`.
            *(
                route
                for prefix in ("/v1", "/openai/v1")
                for route in (
                    Route(f"{prefix}/files", self._upload, methods=["POST"]),
                    Route(f"{prefix}/files", self._list_files, methods=["GET"]),
                    Route(f"{prefix}/files/{{file_id}}", self._file, methods=["GET"]),
                    Route(f"{prefix}/files/{{file_id}}", self._delete_file, methods=["DELETE"]),
                    Route(f"{prefix}/files/{{file_id}}/content", self._file_content, methods=["GET"]),
                    Route(f"{prefix}/batches", self._create_batch, methods=["POST"]),
                    Route(f"{prefix}/batches", self._list_batches, methods=["GET"]),
                    Route(f"{prefix}/batches/{{batch_id}}", self._batch, methods=["GET"]),
                    Route(f"{prefix}/fine_tuning/jobs", self._create_job, methods=["POST"]),
                    Route(f"{prefix}/fine_tuning/jobs", self._list_jobs, methods=["GET"]),
                    Route(f"{prefix}/fine_tuning/jobs/{{job_id}}", self._job, methods=["GET"]),
                    Route(f"{prefix}/fine_tuning/jobs/{{job_id}}/events", self._job_events, methods=["GET"]),
                    Route(f"{prefix}/fine_tuning/jobs/{{job_id}}/checkpoints", self._job_checkpoints, methods=["GET"]),
                    Route(f"{prefix}/fine_tuning/jobs/{{job_id}}/cancel", self._cancel_job, methods=["POST"]),
                )
            ),
            Route("/openai/deployments/{deployment}/embeddings", self._embeddings, methods=["POST"]),
            # Azure OpenAI's GA v1 routes (the deployment in the body's `model`).
            Route("/openai/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/openai/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/responses/{response_id}", self._background_response, methods=["GET"]),
            Route("/openai/v1/responses/{response_id}", self._background_response, methods=["GET"]),
            Route("/openai/v1/embeddings", self._embeddings, methods=["POST"]),
        ]

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.files.clear()
            self.deleted_files.clear()
            self.jobs.clear()
            self.batches.clear()
            self.batch_failure = None
            self.background.clear()
            self.background_failure = None

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
            first = self._script[0] if self._script else None
            if first is not None and first.for_model in (None, body.get("model")):
                reply = self._script.popleft()
            else:
                reply = Reply()
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.hold is not None:
            await asyncio.to_thread(reply.hold.wait, 30)
        if reply.status != 200 or reply.body is not None:
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        message = reply.message or default_message(body)
        if body.get("stream"):
            chunks = reply.chunks or chunks_for(body, message, reply.finish_reason)
            return StreamingResponse(
                _sse(chunks, reply.hold_after_first_chunk), media_type="text/event-stream", headers=reply.headers
            )
        return JSONResponse(completion(body, message, reply.finish_reason), headers=reply.headers)

    async def _responses(self, request: Request) -> Response:
        """The Responses API: `fake: <last user text>` (or the scripted function calls), streamed as events when asked."""
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
            first = self._script[0] if self._script else None
            reply = (
                self._script.popleft()
                if first is not None and first.for_model in (None, body.get("model"))
                else Reply()
            )
        if reply.delay_seconds:
            await asyncio.sleep(reply.delay_seconds)
        if reply.status != 200 or reply.body is not None:
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
        users = [item for item in items if item.get("role") == "user"]
        said = users[-1].get("content") if users else ""
        if isinstance(said, list):  # input parts, as an earlier turn resent comes
            said = "".join(part.get("text", "") for part in said if isinstance(part, dict))
        text = None if reply.function_calls else f"fake: {said}"
        response = responses_wire.response_object(
            model=FAKE_MODEL, text=text, function_calls=reply.function_calls, request=body, input_tokens=7
        )
        if body.get("background"):
            if body.get("store") is not True:  # as OpenAI and Azure OpenAI answer
                error = {"message": "Background mode requires store=true.", "type": "invalid_request_error"}
                return JSONResponse({"error": {**error, "param": "store", "code": None}}, status_code=400)
            if self.background_failure is not None:
                response.update(status="failed", output=[], error=self.background_failure)
            with self._lock:
                self.background[response["id"]] = {"final": response, "polls": 0}
            return JSONResponse({**response, "status": "queued", "output": [], "usage": None})
        if body.get("stream"):
            return StreamingResponse(
                _events(list(responses_wire.stream_events(response)), reply.hold_after_first_chunk),
                media_type="text/event-stream",
                headers=reply.headers,
            )
        return JSONResponse(response, headers=reply.headers)

    async def _background_response(self, request: Request) -> Response:
        with self._lock:
            entry = self.background.get(request.path_params["response_id"])
            if entry is None:
                error = {"message": "No such response.", "type": "invalid_request_error", "param": None, "code": None}
                return JSONResponse({"error": error}, status_code=404)
            entry["polls"] += 1
            final = entry["final"]
        if entry["polls"] == 1:
            return JSONResponse({**final, "status": "in_progress", "output": [], "usage": None})
        return JSONResponse(final)

    def _scripted(self, request: Request, body: Any) -> Response | None:
        """Record the request; a scripted reply, if one is queued, answers instead of the default."""
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
            first = self._script[0] if self._script else None
            reply = None
            if first is not None and (first.for_path is None or request.url.path.endswith(first.for_path)):
                reply = self._script.popleft()
        if reply is None:
            return None
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    async def _upload(self, request: Request) -> Response:
        form = await request.form()
        upload = form["file"]
        content = await upload.read()  # type: ignore[union-attr]
        answer = self._scripted(request, {"purpose": form.get("purpose"), "filename": upload.filename})  # type: ignore[union-attr]
        if answer is not None:
            return answer
        file_id = f"file-fake{len(self.files)}{time.time_ns()}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "filename": upload.filename,  # type: ignore[union-attr]
            "purpose": form.get("purpose"),
            "status": "pending",
            "created_at": 1,
            "content": content,
        }
        return JSONResponse({k: v for k, v in self.files[file_id].items() if k != "content"})

    async def _list_files(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        data = [
            {k: v for k, v in file.items() if k != "content"}
            for file in list(self.files.values())
            if purpose in (None, file["purpose"])
        ]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def _delete_file(self, request: Request) -> Response:
        answer = self._scripted(request, None)
        if answer is not None:
            return answer
        file_id = request.path_params["file_id"]
        if self.files.pop(file_id, None) is None:
            return JSONResponse({"error": {"message": "No such file", "code": "notFound"}}, status_code=404)
        self.deleted_files.append(file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def _file(self, request: Request) -> Response:
        answer = self._scripted(request, None)
        if answer is not None:
            return answer
        file = self.files[request.path_params["file_id"]]
        shown = {k: v for k, v in file.items() if k != "content"}
        file["status"] = "processed"  # processed from the second look on
        return JSONResponse(shown)

    async def _file_content(self, request: Request) -> Response:
        file = self.files.get(request.path_params["file_id"])
        if file is None:
            return JSONResponse({"error": {"message": "No such file", "code": "notFound"}}, status_code=404)
        return Response(file["content"], media_type="application/octet-stream")

    async def _create_batch(self, request: Request) -> Response:
        body = json.loads(await request.body())
        answer = self._scripted(request, body)
        if answer is not None:
            return answer
        if body.get("input_file_id") not in self.files:
            error = {"message": "Input file not found", "type": "invalid_request_error", "code": "invalid_file"}
            return JSONResponse({"error": error}, status_code=400)
        batch_id = f"batch_fake{len(self.batches)}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "failure": self.batch_failure,
            "input": self.files[body["input_file_id"]]["content"],
        }
        self.batch_failure = None
        return JSONResponse(_shown_batch(self.batches[batch_id]))

    async def _list_batches(self, request: Request) -> Response:
        answer = self._scripted(request, None)
        if answer is not None:
            return answer
        data = [_shown_batch(batch) for batch in reversed(self.batches.values())]
        return JSONResponse({"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False})

    async def _batch(self, request: Request) -> Response:
        answer = self._scripted(request, None)
        if answer is not None:
            return answer
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return JSONResponse({"error": {"message": "No such batch", "code": "notFound"}}, status_code=404)
        if batch["status"] == "validating" and batch["failure"] is not None:
            batch["status"], batch["failed_at"] = "failed", int(time.time())
            batch["errors"] = {"object": "list", "data": [batch["failure"]]}
        elif batch["status"] == "validating":
            batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        elif batch["status"] == "in_progress":
            self._finish_batch(batch)
        return JSONResponse(_shown_batch(batch))

    def _finish_batch(self, batch: dict[str, Any]) -> None:
        """Answer every input line like the chat route does; a line whose messages say `[refuse]` fails."""
        outputs, errors = [], []
        for number, line in enumerate(batch["input"].decode().splitlines()):
            if not line.strip():
                continue
            item = json.loads(line)
            with self._lock:
                self.requests.append({"body": item["body"], "headers": {}, "url": f"batch:{batch['id']}"})
            if "[refuse]" in json.dumps(item["body"].get("messages")):
                error = {"code": "model_not_found", "message": "The deployment does not exist.", "line": number + 1}
                errors.append(
                    {"id": f"batch_req_{number}", "custom_id": item["custom_id"], "response": None, "error": error}
                )
                continue
            answer = completion(item["body"], default_message(item["body"]))
            response = {"status_code": 200, "request_id": f"req_{number}", "body": answer}
            outputs.append(
                {"id": f"batch_req_{number}", "custom_id": item["custom_id"], "response": response, "error": None}
            )
        for key, lines in (("output_file_id", outputs), ("error_file_id", errors)):
            if lines:
                file_id = f"file-batch{len(self.files)}{time.time_ns()}"
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                self.files[file_id] = {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(content),
                    "filename": f"{key}.jsonl",
                    "purpose": "batch_output",
                    "status": "processed",
                    "created_at": 1,
                    "content": content,
                }
                batch[key], batch[key.removesuffix("_file_id")] = file_id, content
        total = len(outputs) + len(errors)
        batch["request_counts"] = {"total": total, "completed": len(outputs), "failed": len(errors)}
        batch["status"], batch["completed_at"] = "completed", int(time.time())

    async def _create_job(self, request: Request) -> Response:
        body = json.loads(await request.body())
        answer = self._scripted(request, body)
        if answer is not None:
            return answer
        job_id = f"ftjob-fake{len(self.jobs)}"
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": 1,
            "status": "validating_files",
            "model": body["model"],
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "fine_tuned_model": None,
            "metadata": body.get("metadata"),
            "error": None,
            "trained_tokens": None,
        }
        return JSONResponse(self.jobs[job_id])

    async def _list_jobs(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": list(self.jobs.values()), "has_more": False})

    async def _job(self, request: Request) -> Response:
        answer = self._scripted(request, None)
        if answer is not None:
            return answer
        job = self.jobs[request.path_params["job_id"]]
        if job["status"] in _JOB_STATUSES[:-1]:
            job["status"] = _JOB_STATUSES[_JOB_STATUSES.index(job["status"]) + 1]
            if job["status"] == "succeeded":
                job["fine_tuned_model"] = f"ft:{job['model']}:distillery::{job['id']}"
                job["trained_tokens"] = 1234
        return JSONResponse(job)

    async def _job_events(self, request: Request) -> Response:
        job = self.jobs[request.path_params["job_id"]]
        events = [
            {
                "object": "fine_tuning.job.event",
                "id": f"ev-{n}",
                "created_at": n,
                "level": "info",
                "message": f"Status: {status}",
            }
            for n, status in enumerate(
                _JOB_STATUSES[: _JOB_STATUSES.index(job["status"]) + 1]
                if job["status"] in _JOB_STATUSES
                else [job["status"]]
            )
        ]
        return JSONResponse({"object": "list", "data": events[::-1], "has_more": False})

    async def _job_checkpoints(self, request: Request) -> Response:
        job = self.jobs[request.path_params["job_id"]]
        data = (
            []
            if job["status"] != "succeeded"
            else [
                {
                    "object": "fine_tuning.job.checkpoint",
                    "id": "ftckpt-0",
                    "fine_tuned_model_checkpoint": f"{job['fine_tuned_model']}:ckpt-step-5",
                    "step_number": 5,
                    "metrics": {"train_loss": 0.9},
                    "fine_tuning_job_id": job["id"],
                    "created_at": 1,
                },
                {
                    "object": "fine_tuning.job.checkpoint",
                    "id": "ftckpt-1",
                    "fine_tuned_model_checkpoint": f"{job['fine_tuned_model']}:ckpt-step-10",
                    "step_number": 10,
                    "metrics": {"train_loss": 0.5},
                    "fine_tuning_job_id": job["id"],
                    "created_at": 2,
                },
            ]
        )
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def _cancel_job(self, request: Request) -> Response:
        job = self.jobs[request.path_params["job_id"]]
        job["status"] = "cancelled"
        return JSONResponse(job)

    async def _embeddings(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers), "url": str(request.url)})
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = [{"object": "embedding", "index": i, "embedding": letter_embedding(t)} for i, t in enumerate(texts)]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": "fake-embedding",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


def _shown_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in ("failure", "input", "output", "error")}


_JOB_STATUSES = ["validating_files", "queued", "running", "succeeded"]


def letter_embedding(text: str) -> list[float]:
    """The fake's embedding: how often each letter a-z occurs (tests compute cosines from it themselves)."""
    return [float(text.lower().count(letter)) for letter in "abcdefghijklmnopqrstuvwxyz"]


async def _sse(chunks: list[dict[str, Any]], hold: threading.Event | None) -> Any:
    for number, chunk in enumerate(chunks):
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(0)
        if number == 0 and hold is not None:
            await asyncio.to_thread(hold.wait, 10)
    yield b"data: [DONE]\n\n"


async def _events(events: list[dict[str, Any]], hold: threading.Event | None) -> Any:
    """Responses events: no `[DONE]` after the last, as OpenAI sends them."""
    for number, event in enumerate(events):
        yield responses_wire.sse(event)
        await asyncio.sleep(0)
        if number == 0 and hold is not None:
            await asyncio.to_thread(hold.wait, 10)
