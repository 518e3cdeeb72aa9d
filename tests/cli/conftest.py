"""Drive the `distillery` command in-process (typer's CliRunner) against the session's real local host."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
