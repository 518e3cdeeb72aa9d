"""Drive the `distillery` command in-process (typer's CliRunner) against the session's real local host."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from typer.testing import CliRunner, Result

from distillery_cli.main import app
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed

Cli = Callable[..., Result]


@pytest.fixture
def cli(host: RunningHost) -> Cli:
    """`cli("completions", "list", key=..., input=...)`: run one command against `host`."""

    def run(*args: str, key: str | None = None, url: str | None = None, input: str | None = None) -> Result:
        connection = ["--url", url or host.url, "--api-key", host.key if key is None else key]
        return CliRunner().invoke(
            app, [*connection, *args], input=input, env={"DISTILLERY_ENTRA_SCOPE": None, "COLUMNS": "200"}
        )

    return run


def store(client: openai.OpenAI, count: int, *, model: str = "gpt-4o", **metadata: str) -> list[str]:
    """Store `count` completions, four at a time; their ids in capture order (ids are time-ordered)."""

    def create(n: int) -> str:
        messages = [{"role": "user", "content": f"question {n}"}]
        return client.chat.completions.create(
            model=model,
            store=True,
            metadata=dict(metadata),
            messages=messages,  # type: ignore[arg-type]
        ).id

    with ThreadPoolExecutor(4) as pool:
        stored = sorted(pool.map(create, range(count)))
    wait_listed(client, stored)
    return stored


Answer = tuple[int, dict[str, str], bytes]


class ScriptedService:
    """A local HTTP server that answers each path as a test scripts it: a stand-in for a Distillery that
    misbehaves (hostile file names, control characters, 202 before a first report, 4xx/5xx answers)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.default: Answer | None = None
        """The answer to any path not scripted (else 404)."""
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.split("?")[0]
                service.requests.append(f"{self.command} {path}")
                self.rfile.read(int(self.headers.get("content-length") or 0))
                queue = service.answers.get(path)
                status, headers, body = (
                    (queue.pop(0) if len(queue) > 1 else queue[0])
                    if queue
                    else service.default
                    or (404, {}, json.dumps({"error": {"message": f"No route {path}", "code": "not_found"}}).encode())
                )
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Add an answer for `path`: answers are given in order, and the last one repeats."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers.setdefault(path, []).append((status, headers or {}, raw))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedService]:
    service = ScriptedService()
    yield service
    service.close()


def run_against(service: ScriptedService, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run one command against a scripted service."""
    return CliRunner().invoke(
        app,
        ["--url", service.url, "--api-key", "k", *args],
        env={"DISTILLERY_ENTRA_SCOPE": None, "COLUMNS": "200", **(env or {})},
    )
