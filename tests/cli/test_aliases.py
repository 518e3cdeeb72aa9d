"""`distillery alias set|show|promote|rollback` against the session's local host."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli, ScriptedService, run_against


def test_set_show_promote_and_roll_back(cli: Cli, tag: str) -> None:
    alias, teacher, student = f"bot-{tag}", f"teacher-{tag}", f"student-{tag}"
    bad = cli("alias", "set", alias, f"{teacher}=90", f"{student}=20")
    assert bad.exit_code == 2 and "sum to 100" in bad.stderr
    assert cli("alias", "set", alias, teacher).exit_code == 0
    canary = cli("alias", "set", alias, f"{teacher}=90", f"{student}=10", "--sticky", "user", "--min-pass-rate", "0.9")
    assert canary.exit_code == 0, canary.output
    assert f"{teacher} 90%, {student} 10%" in canary.stdout and "pass rate >= 90%" in canary.stdout

    refused = cli("alias", "promote", alias)
    assert refused.exit_code == 2 and "no comparison" in refused.stderr
    forced = cli("alias", "promote", alias, "--force", "--reason", "load test", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["targets"] == [{"deployment": student, "share": 100}]

    rolled = cli("alias", "rollback", alias)
    assert rolled.exit_code == 0, rolled.output
    shown = cli("alias", "show", alias)
    assert f"{teacher} 100%" in shown.stdout and "failed (forced)" in shown.stdout and "rollback" in shown.stdout
    assert cli("alias", "rollback", alias).exit_code == 2  # nothing to roll back: a 4xx


def test_set_with_online_evals_from_a_file(cli: Cli, tag: str, tmp_path: Path) -> None:
    check = {
        "type": "string_check",
        "name": "echo",
        "input": "{{sample.output_text}}",
        "reference": "fake",
        "operation": "like",
    }
    config = tmp_path / "online.json"
    config.write_text(json.dumps({"sample_rate": 0.2, "testing_criteria": [check], "alert": {"min_pass_rate": 0.7}}))
    shown = cli("alias", "set", f"bot-{tag}", f"teacher-{tag}=90", f"student-{tag}=10", "--online-eval", str(config))
    assert shown.exit_code == 0, shown.output
    assert "20% of stored calls, 1 graders; rolls back under 70% over 1 h" in shown.stdout
    config.write_text("{not json")
    refused = cli("alias", "set", f"bot-{tag}", f"teacher-{tag}=100", "--online-eval", str(config))
    assert refused.exit_code == 2 and "not JSON" in refused.stderr


def test_show_gives_the_online_pass_rates_and_marks_automatic_rollbacks(scripted: ScriptedService) -> None:
    change = {
        "at": 1,
        "by": "online-eval",
        "action": "rollback",
        "automatic": True,
        "targets": [{"deployment": "t", "share": 100}],
    }
    alias = {
        "name": "bot",
        "targets": [{"deployment": "t", "share": 100}],
        "fallback": "t",
        "gate": {"min_pass_rate": 0.8, "max_drop": 0.05},
        "online_eval": {"sample_rate": 0.1, "testing_criteria": [{"name": "echo"}], "alert": None},
        "history": [change],
    }
    row = {"deployment": "s", "pass_rate": 0.25, "passed": 1, "failed": 3, "errored": 0}
    scripted.answer("/api/aliases/bot", alias)
    scripted.answer("/api/aliases/bot/online_evals", {"data": [row]})
    shown = run_against(scripted, "alias", "show", "bot")
    assert shown.exit_code == 0, shown.output
    assert "rollback (automatic)" in shown.stdout and "25.0%" in shown.stdout
