"""The command as a whole: help for every command, exit codes, errors without tracebacks, quota, health, check-file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from distillery_cli.main import app
from tests.cli.conftest import Cli
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


def test_a_bad_key_exits_1_with_the_services_message(cli: Cli) -> None:
    result = cli("completions", "list", key="not-the-key")
    assert result.exit_code == 1
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


def test_quota_as_table_and_json(cli: Cli) -> None:
    table = cli("quota")
    assert table.exit_code == 0, table.output
    assert "used" in table.stdout and "bytes" in table.stdout
    report = json.loads(cli("quota", "--json").stdout)
    assert report["object"] == "quota.report" and report["cap_bytes"] > 0
    assert report["used_bytes"] == report["completion_bytes"] + report["dataset_bytes"]


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
