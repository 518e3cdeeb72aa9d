"""`distillery eval create FILE` and `eval run --min-pass-rate`: a regression gate that exits 3 below the bar."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream

DEFINITION = {
    "name": "gate",
    "data_source_config": {
        "type": "custom",
        "item_schema": {"type": "object", "properties": {"expected": {"type": "string"}}},
        "include_sample_schema": True,
    },
    "testing_criteria": [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.expected}}",
            "operation": "eq",
        }
    ],
}


def test_create_from_a_file_and_gate_a_run_on_its_pass_rate(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    definition = tmp_path / "eval.json"
    definition.write_text(json.dumps(DEFINITION))
    created = cli("eval", "create", str(definition), "--json")
    assert created.exit_code == 0, created.output
    eval_id = json.loads(created.stdout)["id"]

    rows = tmp_path / "rows.jsonl"
    answers = ["a", "b", "c", "x"]  # three of four pass: 0.75
    rows.write_text(
        "".join(
            json.dumps({"item": {"expected": e}, "sample": {"output_text": a}}) + "\n"
            for e, a in zip("abcd", answers, strict=True)
        )
    )
    passing = cli("eval", "run", eval_id, "--data", str(rows), "--min-pass-rate", "0.7")
    assert passing.exit_code == 0, passing.output
    failing = cli("eval", "run", eval_id, "--data", str(rows), "--min-pass-rate", "0.9")
    assert failing.exit_code == 3 and "overall pass rate 0.750 < 0.9" in failing.stderr
    per_criterion = cli("eval", "run", eval_id, "--data", str(rows), "--min-pass-rate", "exact=0.8")
    assert per_criterion.exit_code == 3 and "'exact' pass rate 0.750 < 0.8" in per_criterion.stderr
    assert cli("eval", "run", eval_id, "--data", str(rows), "--min-pass-rate", "2").exit_code == 2

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli("eval", "create", str(bad)).exit_code == 2
