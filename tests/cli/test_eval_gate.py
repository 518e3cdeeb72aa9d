"""`distillery eval create FILE` (JSON or YAML) and `eval run --min-pass-rate`: a regression gate that exits 3 below
the bar."""

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


# The same definition as a person writes it in YAML, with a comment and a block scalar.
DEFINITION_YAML = """\
name: gate from yaml  # as in OpenAI's evals.create
data_source_config:
  type: custom
  item_schema:
    type: object
    properties: {expected: {type: string}}
  include_sample_schema: true
testing_criteria:
  - type: string_check
    name: exact
    input: "{{sample.output_text}}"
    reference: >-
      {{item.expected}}
    operation: eq
"""


def test_create_from_yaml(cli: Cli, host: RunningHost, tmp_path: Path) -> None:
    definition = tmp_path / "eval.yaml"
    definition.write_text(DEFINITION_YAML)
    created = cli("eval", "create", str(definition), "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["name"] == "gate from yaml"
    assert body["testing_criteria"][0]["reference"] == "{{item.expected}}"

    # A tag that would build a Python object is refused (safe_load), as is YAML that is not a mapping.
    hostile = tmp_path / "hostile.yml"
    hostile.write_text("name: !!python/object/apply:os.system ['true']\n")
    refused = cli("eval", "create", str(hostile), "--json")
    assert refused.exit_code == 2
    error = json.loads(refused.stdout)["error"]
    assert error["type"] == "usage_error" and "not YAML" in error["message"]
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: a\n")
    assert cli("eval", "create", str(listed)).exit_code == 2
    assert "must be an object" in cli("eval", "create", str(listed)).stderr
