"""`distillery export`: JSONL page by page, resumable after a stop or a kill with no duplicate and no gap."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import Cli, store
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_export_stops_and_resumes_to_the_same_file(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    ids = store(host.openai_client(), 7, tag=tag)
    store(host.openai_client(), 1, tag=tag + "-other")
    selection = ["-m", f"tag={tag}", "--page-size", "2"]

    full = tmp_path / "full.jsonl"
    result = cli("export", "--out", str(full), *selection, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"file": str(full), "written": 7, "resumed_after": None}
    assert [json.loads(line)["id"] for line in _lines(full)] == ids
    assert json.loads(_lines(full)[0])["object"] == "chat.completion"

    part = tmp_path / "part.jsonl"
    assert cli("export", "--out", str(part), *selection, "--limit", "3").exit_code == 0
    assert [json.loads(line)["id"] for line in _lines(part)] == ids[:3]
    with part.open("a") as file:  # what a kill in the middle of a write leaves
        file.write('{"id": "chatcmpl-torn", "obj')
    resumed = cli("export", "--out", str(part), *selection, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout) == {"file": str(part), "written": 4, "resumed_after": ids[2]}
    assert part.read_bytes() == full.read_bytes()

    again = cli("export", "--out", str(part), *selection, "--json")  # nothing new: nothing added
    assert json.loads(again.stdout)["written"] == 0 and part.read_bytes() == full.read_bytes()
    restarted = cli("export", "--out", str(part), *selection, "--restart", "--json")
    assert json.loads(restarted.stdout)["written"] == 7 and part.read_bytes() == full.read_bytes()


def test_export_killed_mid_way_resumes_without_duplicates(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    ids = store(host.openai_client(), 20, tag=tag)
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "distillery_cli", "--url", host.url, "--api-key", host.key]
    command += ["export", "--out", str(out), "-m", f"tag={tag}", "--page-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 3) and process.poll() is None:
            assert time.monotonic() < deadline, "the export wrote nothing"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    written_before = out.read_bytes().count(b"\n")
    assert 3 <= written_before < len(ids)

    resumed = cli("export", "--out", str(out), "-m", f"tag={tag}", "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["resumed_after"] == ids[written_before - 1]
    exported = [json.loads(line)["id"] for line in _lines(out)]
    assert exported == ids and len(set(exported)) == len(ids)

    one_go = tmp_path / "one-go.jsonl"
    assert cli("export", "--out", str(one_go), "-m", f"tag={tag}").exit_code == 0
    assert out.read_bytes() == one_go.read_bytes()
