"""`distillery finetune start|show|cancel|deploy` against the local host's queue worker and the fake upstream."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli, store
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream


def distillation_dataset(cli: Cli, host: RunningHost, tag: str) -> str:
    store(host.openai_client(), 24, tag=tag)  # the id-hashed split always leaves 10 training examples
    created = cli("datasets", "create", "--kind", "distillation", "-m", f"tag={tag}", "--wait", "--json")
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["id"])


def test_start_wait_show_and_deploy_by_hand(cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    dataset_id = distillation_dataset(cli, host, tag)
    refused = cli("finetune", "start", dataset_id, "--model", "gpt-4.1-mini", "--suffix", "v1.2")
    assert refused.exit_code == 2 and "'.'" in refused.stderr  # the service's 400

    started = cli(
        "finetune", "start", dataset_id, "--model", "gpt-4.1-mini", "--suffix", "docs", "--seed", "7",
        "--epochs", "2", "--wait", "--json",
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    job = json.loads(started.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:gpt-4.1-mini:")
    assert job["params"]["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    assert "succeeded" in started.stderr  # the progress line

    shown = cli("finetune", "show", job["id"])
    assert shown.exit_code == 0, shown.output
    assert job["fine_tuned_model"] in shown.stdout and "training loss" in shown.stdout and "0.5000" in shown.stdout

    # An OpenAI-compatible upstream has no control plane: the CLI says what is missing, then registers by hand.
    unavailable = cli("finetune", "deploy", job["id"])
    assert unavailable.exit_code == 2 and "OPENAI_BASE_URL" in unavailable.stderr  # a 4xx
    registered = cli("finetune", "deploy", job["id"], "--existing", "--name", f"student-{tag}", "--json")
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.stdout)["provisioning_state"] == "Succeeded"
    assert f"student-{tag}" in cli("finetune", "show", job["id"]).stdout


def test_cancel_wait(cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    dataset_id = distillation_dataset(cli, host, tag)
    started = cli("finetune", "start", dataset_id, "--model", "gpt-4.1-mini", "--json")
    assert started.exit_code == 0, started.output
    cancelled = cli("finetune", "cancel", json.loads(started.stdout)["id"], "--wait", "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    failed_wait = cli("finetune", "show", json.loads(started.stdout)["id"], "--wait")
    assert failed_wait.exit_code == 3 and "cancelled" in failed_wait.stderr  # --wait on a job that did not succeed
