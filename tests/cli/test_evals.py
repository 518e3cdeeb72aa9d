"""`distillery eval run --wait` on stored completions and on a local JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli, store
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream

IS_FAKE = {
    "type": "string_check",
    "name": "is the fake model",
    "input": "{{sample.output_text}}",
    "reference": "fake:",
    "operation": "ilike",
}


def test_eval_run_waits_on_stored_completions_and_a_file(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    client = host.openai_client()
    store(client, 3, tag=tag)
    evaluation = client.evals.create(
        name=tag,
        data_source_config={"type": "stored_completions", "metadata": {"tag": tag}},
        testing_criteria=[IS_FAKE],  # type: ignore[list-item]
    )

    result = cli("eval", "run", evaluation.id, "--data", "stored_completions", "-m", f"tag={tag}", "--wait", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["status"] == "completed" and run["model"] == "stored"
    assert run["result_counts"] == {"total": 3, "passed": 3, "failed": 0, "errored": 0}
    assert run["data_source"]["source"] == {"type": "stored_completions", "metadata": {"tag": tag}}

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"item": {"input": [{"role": "user", "content": "hi"}]}, "sample": {"output_text": "FAKE: hi"}})
        + "\n"
        + json.dumps({"item": {"input": [{"role": "user", "content": "yo"}]}, "sample": {"output_text": "human"}})
        + "\n"
    )
    table = cli("eval", "run", evaluation.id, "--data", str(rows), "--name", "from a file", "--wait")
    assert table.exit_code == 0, table.output
    assert "completed" in table.stdout and "1 passed, 1 failed" in table.stdout and "is the fake model" in table.stdout

    rerun = cli("eval", "run", evaluation.id, "--data", str(rows), "--model", "student", "--wait", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["result_counts"]["passed"] == 2  # the fake upstream answered both

    bad = cli("eval", "run", evaluation.id, "--data", "no-such-file.jsonl")
    assert bad.exit_code == 2 and "neither" in bad.output
    unknown = cli("eval", "run", "eval_" + "0" * 24, "--data", "stored_completions", "-m", f"tag={tag}")
    assert unknown.exit_code == 2 and "404" in unknown.stderr  # a 4xx: the command must change
