"""The command as a whole: help for every command, exit codes, errors without tracebacks, quota, health, check-file."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from distillery_cli.common import EXIT_API_ERROR, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from distillery_cli.main import app
from tests.cli.conftest import Cli, ScriptedService, run_against
from tests.conftest import RunningHost

GOOD = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
BAD = {"messages": [{"role": "robot", "content": "beep"}]}


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _command_paths(sub, (*path, name))
    return found


def test_every_command_answers_help() -> None:
    paths = _command_paths(get_command(app))
    assert set(paths) >= {
        (),
        ("completions", "list"),
        ("completions", "show"),
        ("completions", "delete"),
        ("export",),
        ("datasets", "create"),
        ("datasets", "show"),
        ("datasets", "download"),
        ("eval", "run"),
        ("quota",),
        ("health",),
        ("check-file",),
    }
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: distillery" in result.output and "--help" in result.output, path


def test_usage_errors_exit_2() -> None:
    result = CliRunner().invoke(app, ["completions", "list", "--metadata", "no-equals-sign"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = CliRunner().invoke(app, ["completions", "list", "--created-after", "yesterday"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    assert CliRunner().invoke(app, ["completions", "frobnicate"]).exit_code == 2
    result = CliRunner().invoke(app, ["--entra", "quota"], env={"DISTILLERY_ENTRA_SCOPE": None})
    assert result.exit_code == 2 and "--entra-scope" in result.output


def test_a_bad_key_exits_2_with_the_services_message(cli: Cli) -> None:
    result = cli("completions", "list", key="not-the-key")
    assert result.exit_code == 2
    assert "Incorrect API key provided." in result.stderr and "401" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_entra_without_a_credential_exits_1_with_the_fix(host: RunningHost) -> None:
    # Only the environment credential is tried (none is configured here), so no sign-in or IMDS probe is attempted.
    env = {"AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential", "AZURE_CLIENT_ID": None, "AZURE_TENANT_ID": None}
    result = CliRunner().invoke(
        app, ["--url", host.url, "--entra", "--entra-scope", "api://x/.default", "quota"], env=env
    )
    assert result.exit_code == 1, result.output
    assert "No Entra ID token for 'api://x/.default'" in result.stderr and "Traceback" not in result.output


def test_an_unreachable_service_exits_1_without_a_traceback(cli: Cli, host: RunningHost) -> None:
    result = cli("quota", url="http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "Could not reach http://127.0.0.1:9" in result.stderr and "Traceback" not in result.output
    error = json.loads(cli("--json", "quota", url="http://127.0.0.1:9").stdout)["error"]
    assert error["type"] == "connection_error" and error["exit_code"] == 1


def test_quota_as_table_and_json(cli: Cli) -> None:
    table = cli("quota")
    assert table.exit_code == 0, table.output
    assert "used" in table.stdout and "bytes" in table.stdout
    report = json.loads(cli("quota", "--json").stdout)
    assert report["object"] == "quota.report" and report["cap_bytes"] > 0
    assert report["used_bytes"] == report["completion_bytes"] + report["dataset_bytes"] + report["eval_bytes"]


def test_health_reports_every_probe(cli: Cli) -> None:
    result = cli("health", "--json")
    assert result.exit_code == 0, result.output
    health = json.loads(result.stdout)
    assert health["status"] == "ok" and health["permissions"]["healthy"] is True
    probes = {probe["name"]: probe["status"] for probe in health["permissions"]["probes"]}
    assert any(name.startswith("blob_container:") and status == "ok" for name, status in probes.items())
    table = cli("health")
    assert table.exit_code == 0 and "healthy" in table.stdout and "blob_container:" in table.stdout
    assert "default" in table.stdout  # the caller identities


def test_check_file_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    result = CliRunner().invoke(app, ["check-file", str(good)])
    assert result.exit_code == 0 and "ok: every line" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps(BAD) + "\nnot json\n")
    result = CliRunner().invoke(app, ["check-file", str(bad)])
    assert result.exit_code == 3
    assert f"{bad}:2: unrecognized_role:" in result.stdout and f"{bad}:3: invalid_json:" in result.stdout
    assert "2 bad line(s)" in result.stderr
    report = json.loads(CliRunner().invoke(app, ["check-file", str(bad), "--json"]).stdout)
    assert report["ok"] is False and report["bad_lines"] == 2
    assert {(p["line"], p["rule"]) for p in report["problems"]} >= {(2, "unrecognized_role"), (3, "invalid_json")}

    assert CliRunner().invoke(app, ["check-file", str(tmp_path / "missing.jsonl")]).exit_code == 2


DATASET = "dataset-" + "b" * 32


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


# (what happens, command, what the scripted service answers, exit code, error type or None for no error object)
EXIT_TABLE = [
    ("unknown option", ["completions", "list", "--frobnicate"], None, 2, "usage_error"),
    ("bad option value", ["completions", "list", "--metadata", "no-equals"], None, 2, "usage_error"),
    (
        "server 400",
        ["datasets", "create", "--kind", "x"],
        (400, _error("Invalid 'kind'.", "invalid_value")),
        2,
        "invalid_request_error",
    ),
    (
        "server 401",
        ["quota"],
        (401, _error("Incorrect API key provided.", "invalid_api_key")),
        2,
        "invalid_request_error",
    ),
    (
        "server 404",
        ["datasets", "show", DATASET],
        (404, _error("No dataset.", "not_found")),
        2,
        "invalid_request_error",
    ),
    ("server 429", ["quota"], (429, _error("Slow down.", "rate_limited")), 1, "api_error"),
    ("server 500", ["quota"], (500, _error("Storage is down.", "storage_unavailable")), 1, "api_error"),
    ("not JSON", ["quota"], (200, b"<html>"), 1, "api_error"),
]


@pytest.mark.parametrize(
    ("case", "args", "answer", "exit_code", "error_type"), EXIT_TABLE, ids=[c[0] for c in EXIT_TABLE]
)
def test_one_exit_code_table_and_json_errors_before_or_after_the_command(
    scripted: ScriptedService, case: str, args: list[str], answer: Any, exit_code: int, error_type: str
) -> None:
    if answer is not None:
        status, body = answer
        path = {"datasets": "/api/datasets", "quota": "/api/quota"}[args[0]]
        scripted.answer(path if args[1:2] != ["show"] else f"{path}/{DATASET}", body, status=status)
    plain = run_against(scripted, *args)
    assert plain.exit_code == exit_code, plain.output
    assert isinstance(plain.exception, SystemExit) and plain.stdout == ""
    for where in ([*args, "--json"], ["--json", *args]):
        result = run_against(scripted, *where)
        assert result.exit_code == exit_code, (where, result.output)
        error = json.loads(result.stdout)["error"]
        assert error["exit_code"] == exit_code and error["type"] == error_type and error["message"], error
        if answer is not None and answer[0] >= 400:
            assert error["status"] == answer[0] and error["code"] == answer[1]["error"]["code"]


def test_the_readme_lists_the_exit_code_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Exit codes**") :]
    rows = section[section.index("\n|") :]
    listed = {int(code) for code in re.findall(r"^\| `(\d)` \|", rows[: rows.index("\n\n")], re.MULTILINE)}
    assert listed == {EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_PROBLEMS}


def test_problems_exit_3_with_the_result_on_stdout(
    scripted: ScriptedService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    failed = {
        "id": DATASET,
        "kind": "distillation",
        "status": "failed",
        "files": [],
        "error": {"code": "too_few_examples", "message": "Too few."},
    }
    scripted.answer(f"/api/datasets/{DATASET}", failed)
    for args in (["datasets", "download", DATASET, "--wait", "--json"], ["--json", "datasets", "download", DATASET]):
        result = run_against(scripted, *args)
        assert result.exit_code == EXIT_PROBLEMS and json.loads(result.stdout)["status"] == "failed", result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert run_against(scripted, "--json", "check-file", str(bad)).exit_code == EXIT_PROBLEMS


def test_check_file_and_the_module_agree_on_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    bad.write_text(json.dumps(BAD) + "\n")
    root = Path(__file__).resolve().parents[2]
    for path, expected in ((good, EXIT_OK), (bad, EXIT_PROBLEMS), (tmp_path / "missing.jsonl", EXIT_USAGE)):
        module = subprocess.run(
            [sys.executable, "-m", "shared.datasets.check", str(path)], cwd=root, capture_output=True
        )
        command = CliRunner().invoke(app, ["check-file", str(path)])
        assert (module.returncode, command.exit_code) == (expected, expected), (path, module.stderr)


QUOTA = {
    "object": "quota.report",
    "generated_at": "2026-12-06T00:00:00Z",
    "used_bytes": 1,
    "cap_bytes": 10,
    "percent_used": 10.0,
    "by_model": [],
}


def _pending_then_quota(scripted: ScriptedService) -> None:
    for _ in range(3):
        scripted.answer("/api/quota", {"status": "building"}, status=202, headers={"retry-after": "0.5"})
    scripted.answer("/api/quota", QUOTA)


def test_the_first_report_wait_says_so_in_one_line_off_a_terminal(scripted: ScriptedService) -> None:
    _pending_then_quota(scripted)
    result = run_against(scripted, "quota")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("building its first report at /api/quota") == 1 and "used" in result.stdout


def test_the_first_report_wait_shows_a_spinner_on_a_terminal(scripted: ScriptedService) -> None:
    _pending_then_quota(scripted)
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "distillery_cli", "--url", scripted.url, "--api-key", "k", "quota"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    ) as process:
        os.close(follower)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
            while chunk := os.read(leader, 4096):
                shown += chunk
        stdout = process.stdout.read() if process.stdout else b""
    os.close(leader)
    assert process.returncode == 0 and b"used" in stdout
    assert "building its first report" in shown.decode()
    assert any(frame in shown.decode() for frame in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"), shown  # rich's dots spinner


def test_quota_shows_cost_and_break_even_when_priced(scripted: ScriptedService) -> None:
    tally = {"calls": 7, "input_tokens": 7000, "cached_tokens": 0, "output_tokens": 3500, "unpriced_calls": 0}
    report = {
        "object": "quota.report",
        "used_bytes": 1,
        "cap_bytes": 10,
        "percent_used": 10.0,
        "cost": {
            "by_deployment": [
                {"name": "gpt-4.1", "cost": 0.0399, **tally},
                {"name": "mystery", "cost": 0.0, **tally, "unpriced_calls": 7},
            ],
            "break_even": [
                {
                    "alias": "bot",
                    "teacher": "gpt-4.1",
                    "student": "student-1",
                    "calls_per_day": 1.0,
                    "break_even_calls_per_day": 8500.0,
                    "savings_per_day": -40.8,
                    "pays_off": False,
                }
            ],
        },
    }
    scripted.answer("/api/quota", report)
    shown = run_against(scripted, "quota")
    assert shown.exit_code == 0, shown.output
    assert "0.0399" in shown.stdout and "(7 unpriced)" in shown.stdout
    assert "student-1 vs gpt-4.1" in shown.stdout and "8,500.0" in shown.stdout and "-40.80" in shown.stdout
