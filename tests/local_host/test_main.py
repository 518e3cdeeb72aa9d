"""`python -m local_host` as a person runs it: the port is bound before it is announced, a busy port
is one clear line, Ctrl-C closes every client, a key kept off the screen says where it is, and
connections send without Nagle's delay."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from local_host.__main__ import _bind
from local_host.azurite import ROOT, Azurite
from tests.conftest import start_host
from tests.fakes import FakeUpstream


def test_a_busy_port_is_one_clear_line_and_a_failing_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "local_host", "--port", str(port), "--settings", "/nonexistent"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stdout == ""  # never "Distillery is listening"
    assert done.stderr.splitlines() == [
        f"Distillery cannot listen on 127.0.0.1:{port}: the port is in use (stop what holds it, or pass --port)"
    ]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_closes_every_client(
    azurite: Azurite, upstream: FakeUpstream, tmp_path: Path, stop: signal.Signals
) -> None:
    """Storage, queue and upstream clients were all used; none is left for the garbage collector to report.

    SIGTERM (a process manager, `timeout`) ends the run as cleanly as Ctrl-C: with `--azurite`, the
    same clean-up stops the Azurite it started instead of leaving it holding ports 10000-10002."""
    with start_host(
        azurite.connection_string, tmp_path, OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY="sk-upstream"
    ) as host:
        client = host.openai_client()
        done = client.chat.completions.create(
            model="gpt-4o", store=True, messages=[{"role": "user", "content": "hello"}]
        )
        assert client.chat.completions.retrieve(done.id).id == done.id
        with host.http() as http:
            assert (
                http.post("/api/datasets", json={"kind": "evaluation", "filter": {"metadata": {"t": "x"}}}).status_code
                == 202
            )

        host.process.send_signal(stop)
        assert host.process.wait(timeout=30) == 0
    log = host.log()
    assert "Distillery is listening" in log
    assert "Unclosed" not in log and "Traceback" not in log, log


def test_a_key_kept_off_the_screen_says_where_it_is(azurite: Azurite, tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    with start_host(azurite.connection_string, tmp_path, "--settings", str(settings), DISTILLERY_API_KEY="") as host:
        key = json.loads(settings.read_text())["Values"]["DISTILLERY_API_KEY"]
        listed = OpenAI(base_url=f"{host.url}/openai/v1", api_key=key).chat.completions.list()
        assert listed.data == []
    log = host.log()
    assert f"API key:   not shown (no terminal); it is in {settings} (Values.DISTILLERY_API_KEY)" in log
    assert key not in log


async def test_connections_to_the_listener_send_without_delay() -> None:
    """Every accepted connection has TCP_NODELAY: without it, a response written in two parts waits for
    the client's delayed ACK (about 40 ms on every request)."""
    listener = _bind("127.0.0.1", 0)
    accepted: asyncio.Queue[int] = asyncio.Queue()

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(serve, sock=listener)
    async with server:
        _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        assert await asyncio.wait_for(accepted.get(), timeout=10) != 0
        writer.close()
