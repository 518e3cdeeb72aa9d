"""`distillery datasets create --wait`, `show` and `download` against the local host's queue worker."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli, ScriptedService, run_against, store
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream


def test_create_wait_show_and_download(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    store(host.openai_client(), 12, tag=tag)
    created = cli("datasets", "create", "--kind", "distillation", "-m", f"tag={tag}", "--name", tag, "--wait", "--json")
    assert created.exit_code == 0, created.output
    dataset = json.loads(created.stdout)
    assert dataset["status"] == "succeeded" and dataset["counts"]["written"] == 12
    assert dataset["filter"]["metadata"] == {"tag": tag} and dataset["name"] == tag
    assert "succeeded" in created.stderr  # the progress line

    shown = cli("datasets", "show", dataset["id"])
    assert shown.exit_code == 0 and dataset["id"] in shown.stdout and "train.jsonl" in shown.stdout

    out = tmp_path / "files"
    downloaded = cli("datasets", "download", dataset["id"], "--out", str(out), "--json")
    assert downloaded.exit_code == 0, downloaded.output
    names = {file["name"] for file in json.loads(downloaded.stdout)["files"]}
    assert names == {file["name"] for file in dataset["files"]} | {"manifest.json"}
    for file in dataset["files"]:
        content = (out / file["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == file["sha256"] and content.count(b"\n") == file["lines"]
    assert json.loads((out / "manifest.json").read_text())["dataset_id"] == dataset["id"]
    assert not list(out.glob("*.part"))
    checked = cli("check-file", str(out / "train.jsonl"))
    assert checked.exit_code == 0 and "ok: every line" in checked.stdout


def test_download_waits_and_a_failed_job_exits_3(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    store(host.openai_client(), 2, tag=tag)
    queued = cli("datasets", "create", "--kind", "evaluation", "-m", f"tag={tag}", "--json")
    assert queued.exit_code == 0 and json.loads(queued.stdout)["status"] == "queued"
    dataset_id = json.loads(queued.stdout)["id"]
    downloaded = cli("datasets", "download", dataset_id, "--out", str(tmp_path), "--wait")
    assert downloaded.exit_code == 0, downloaded.output
    assert (tmp_path / "eval.jsonl").read_text().count("\n") == 2 and "eval.jsonl" in downloaded.stdout

    # A distillation dataset needs 10 usable completions: the job fails, and --wait says so with exit 3.
    failed = cli("datasets", "create", "--kind", "distillation", "-m", f"tag={tag}", "--wait")
    assert failed.exit_code == 3, failed.output
    assert "too_few_examples" in failed.stdout and "failed" in failed.stderr

    missing = cli("datasets", "show", "dataset-" + "0" * 32)
    assert missing.exit_code == 2 and "404" in missing.stderr


DATASET = "dataset-" + "a" * 32


def _finished(*names: str, **extra: Any) -> dict[str, Any]:
    files = [{"name": name, "lines": 1, "bytes": 8, "tokens": 2, "sha256": None} for name in names]
    return {"id": DATASET, "object": "dataset", "kind": "evaluation", "status": "succeeded", "files": files, **extra}


def test_download_writes_only_plain_file_names_under_out(
    scripted: ScriptedService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile service names files that would land outside --out: nothing is written anywhere."""
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    scripted.default = (200, {"content-type": "application/octet-stream"}, b"escaped\n")
    for hostile in ("../../escaped.txt", str(tmp_path / "absolute.txt"), "sub/inner.jsonl", "..", ".profile", "a\\b"):
        scripted.answers.clear()
        scripted.answer(f"/api/datasets/{DATASET}", _finished("eval.jsonl", hostile))
        result = run_against(scripted, "datasets", "download", DATASET, "--out", "out")
        assert result.exit_code == 1, (hostile, result.output)
        assert "not a plain file name" in result.stderr and "nothing was written" in result.stderr
        assert [path for path in tmp_path.rglob("*") if path.is_file()] == [], hostile

    scripted.answers.clear()
    scripted.answer(f"/api/datasets/{DATASET}", _finished("eval.jsonl"))
    assert run_against(scripted, "datasets", "download", DATASET, "--out", "out").exit_code == 0
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == ["eval.jsonl", "manifest.json"]
    assert (work / "out" / "eval.jsonl").read_bytes() == b"escaped\n"


def test_show_tells_the_rebuild_count(scripted: ScriptedService) -> None:
    scripted.answer(f"/api/datasets/{DATASET}", _finished("eval.jsonl", rebuilds=2))
    shown = run_against(scripted, "datasets", "show", DATASET)
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^rebuilds\s+2\s*$", shown.stdout, re.MULTILINE), shown.stdout
