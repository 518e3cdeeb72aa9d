"""The whole loop through HTTP and the `openai` SDK, with stand-ins for Azure OpenAI's data plane and
control plane: Distill -> job succeeds -> deploy -> the comparison runs by itself on the held-out items
-> alias canary -> gate (found through lineage) -> promote -> rollback."""

from __future__ import annotations

import pytest

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.e2e.test_datasets import wait_for
from tests.e2e.test_deployments import azure_host, control_plane  # noqa: F401 - module fixtures
from tests.e2e.test_evals import wait_for_run
from tests.e2e.test_fine_tuning import wait_for_job
from tests.fakes import FakeUpstream


def test_distill_deploy_judge_canary_promote_and_roll_back(
    azure_host: RunningHost,  # noqa: F811
    fake_upstream: FakeUpstream,
    tag: str,
) -> None:
    client = azure_host.azure_client()
    stored = [
        client.chat.completions.create(
            model="teacher", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": f"q{n}"}]
        ).id
        for n in range(24)
    ]
    wait_listed(client, stored)  # the dataset selects them from the index
    with azure_host.http() as http:
        started = http.post(
            "/api/datasets",
            json={"kind": "distillation", "filter": {"metadata": {"tag": tag}}, "validation_fraction": 0.3},
        )
        dataset = wait_for(http, started.json()["id"], "succeeded", "failed")
        bad = http.post(
            f"/api/datasets/{dataset['id']}/fine_tuning_jobs",
            json={"model": "gpt-4.1-mini", "comparison": {"testing_criteria": [{"type": "python", "name": "x"}]}},
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "comparison", bad.text
        created = http.post(
            f"/api/datasets/{dataset['id']}/fine_tuning_jobs",
            json={"model": "gpt-4.1-mini", "suffix": "loop", "training_type": "developer"},
        )
        job = wait_for_job(http, created.json()["id"])
        assert job["status"] == "succeeded", job
        student = f"student-{tag}"
        assert http.post(f"/api/fine_tuning_jobs/{job['id']}/deployments", json={"name": student}).status_code == 202

        # Nobody asks for the comparison: following the deployment to Succeeded starts it.
        path = f"/api/fine_tuning_jobs/{job['id']}/deployments/{student}"
        ready = wait_until(http, path, lambda d: d["provisioning_state"] == "Succeeded")
        comparison = ready["comparison"]
        assert comparison["eval_id"] and 0 < comparison["items"] < 24, comparison
        lineage = http.get(f"/api/fine_tuning_jobs/{job['id']}").json()["lineage"]
        assert lineage["comparisons"][student]["student_run_id"] == comparison["student_run_id"]

        evals = azure_host.openai_client()
        teacher_run = wait_for_run(evals, comparison["eval_id"], comparison["teacher_run_id"])
        student_run = wait_for_run(evals, comparison["eval_id"], comparison["student_run_id"])
        assert teacher_run.status == student_run.status == "completed"
        assert student_run.model == student and student_run.result_counts.total == comparison["items"]
        compared = http.get(
            f"/api/evals/{comparison['eval_id']}/runs/compare",
            params={"runs": f"{comparison['teacher_run_id']},{comparison['student_run_id']}"},
        ).json()
        (criterion,) = compared["per_testing_criteria"]
        assert criterion["testing_criteria"] == "close to the teacher"
        assert compared["runs"][1]["lineage"]["fine_tuning_job_id"] == job["id"]

        # Canary behind an alias, then promote: the gate finds the comparison through the lineage.
        alias = f"bot-{tag}"
        canary = {"targets": [{"deployment": "teacher", "share": 80}, {"deployment": student, "share": 20}]}
        assert http.put(f"/api/aliases/{alias}", json=canary).status_code == 200
        fake_upstream.requests.clear()
        for n in range(20):
            client.chat.completions.create(model=alias, messages=[{"role": "user", "content": f"live {n}"}])
        called = {request["url"].split("/deployments/")[1].split("/")[0] for request in fake_upstream.requests}
        assert called <= {"teacher", student} and "teacher" in called
        promoted = http.post(f"/api/aliases/{alias}/promote", json={})
        assert promoted.status_code == 200, promoted.text
        gate = promoted.json()["history"][-1]["gate_result"]
        assert gate["passed"] and gate["comparison"]["student_run_id"] == comparison["student_run_id"]
        assert gate["per_testing_criteria"][0]["pass_rate"] == pytest.approx(criterion["pass_rate"][student_run.id])
        assert promoted.json()["targets"] == [{"deployment": student, "share": 100}]
        rolled = http.post(f"/api/aliases/{alias}/rollback", json={})
        assert rolled.json()["targets"] == [{"deployment": "teacher", "share": 100}]
