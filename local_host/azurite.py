"""Start Azurite (installed from npm into `node_modules`) and hand back its connection string."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's fixed, publicly documented development key."""


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Ask a child process to end, and kill it if it does not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connection_string(blob_port: int, queue_port: int, table_port: int, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT};"
        f"QueueEndpoint=http://{host}:{queue_port}/{ACCOUNT};"
        f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT};"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_azurite(
    *, ports: tuple[int, int, int] | None = None, location: Path | None = None, attempts: int = 5
) -> Azurite:
    """Start Azurite on the given ports (default: free ones) and wait until all three accept."""
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}; run `npm ci` (make does this).")
    last_error = ""
    for _ in range(attempts):
        blob, queue, table = ports or (free_port(), free_port(), free_port())
        args = [
            str(AZURITE_BIN),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            # Longer than the SDKs keep idle connections, so Azurite never closes one a client reuses.
            *("--blobKeepAliveTimeout", "120", "--queueKeepAliveTimeout", "120", "--tableKeepAliveTimeout", "120"),
            *("--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table)),
        ]
        args += ["--location", str(location)] if location else ["--inMemoryPersistence"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if _wait_for_ports(process, (blob, queue, table)):
            return Azurite(process, blob, queue, table)
        process.kill()
        _, stderr = process.communicate()
        last_error = stderr.decode(errors="replace").strip()
        if ports:
            break
    raise RuntimeError(f"Azurite did not start: {last_error or 'no output'}")


def _wait_for_ports(process: subprocess.Popen[bytes], ports: tuple[int, ...], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)
    return not pending
