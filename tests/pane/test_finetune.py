"""Fine-tuning in the pane, in Chromium against the real local stack: start from a dataset card, follow the
job live to its fine-tuned model with its training-loss chart and events, deploy it (here: registered by
hand, the fake upstream being OpenAI-compatible) and delete the deployment; cancel a job still preparing."""

from __future__ import annotations

import time
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from shared.datasets.formats import in_validation
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream, Reply
from tests.pane.conftest import screenshot
from tests.pane.test_pane import Host, sign_in, store


def built_dataset(host: RunningHost, key: str, tag: str) -> dict[str, Any]:
    store(host, 24, tag=tag)  # 12 left under 10 training examples about one run in nine (the split is by id hash)
    with httpx.Client(base_url=host.url, headers={"api-key": key}, timeout=30) as http:
        dataset = http.post(
            "/api/datasets", json={"kind": "distillation", "name": f"ft {tag}", "filter": {"metadata": {"tag": tag}}}
        ).json()
        deadline = time.monotonic() + 60
        while dataset["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            dataset = http.get(f"/api/datasets/{dataset['id']}").json()
    assert dataset["status"] == "succeeded", dataset
    return dict(dataset)


def test_fine_tune_from_a_dataset_card_follow_it_and_deploy(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    built_dataset(host, keys["full"], tag)
    sign_in(page, host, keys["full"])
    page.get_by_role("link", name="Datasets").click()
    card = page.locator("article.dataset", has_text=f"ft {tag}")
    card.get_by_role("button", name="Fine-tune…").click()
    dialog = page.get_by_role("dialog", name="Fine-tune")
    dialog.get_by_label("Base model").fill("gpt-4.1-mini-2025-04-14")
    dialog.get_by_label("Training type").select_option("developer")
    dialog.get_by_label("Suffix (optional)").fill("support.v2")
    dialog.get_by_label("Seed (optional)").fill("7")
    dialog.get_by_label("Epochs (optional)").fill("2")
    dialog.get_by_role("button", name="Start fine-tuning").click()
    expect(dialog.locator(".form-error")).to_contain_text("'.'")  # the service's refusal, shown in the form
    dialog.get_by_label("Suffix (optional)").fill("support")
    dialog.get_by_role("button", name="Start fine-tuning").click()

    view = page.locator("section.fine-tuning-job")
    expect(view.get_by_role("heading", name="Fine-tuning job")).to_be_visible()
    expect(view.locator(".job-facts .badge.status-succeeded")).to_be_visible(timeout=60_000)
    expect(view.locator(".fine-tuned-model")).to_contain_text("ft:gpt-4.1-mini-2025-04-14:")
    expect(view.locator(".job-facts")).to_contain_text("developer")
    expect(view.locator("svg.loss-chart circle")).to_have_count(2)
    expect(view.locator("svg.loss-chart")).to_have_attribute(
        "aria-label", "Training loss by step: step 5 0.9000, step 10 0.5000"
    )
    expect(view.locator(".event-list")).to_contain_text("Status: succeeded")
    expect(view.get_by_role("button", name="Cancel fine-tuning")).to_have_count(0)  # nothing left to cancel
    screenshot(page, "fine-tuning-job", full_page=True)

    form = view.get_by_role("form", name="Deploy the fine-tuned model")
    form.get_by_label("Deployment name").fill(f"student-{tag}")
    form.get_by_role("button", name="Deploy").click()
    expect(form.locator(".form-error")).to_contain_text("OPENAI_BASE_URL")  # no control plane: say so
    form.get_by_label("Register a deployment made elsewhere").check()
    form.get_by_role("button", name="Deploy").click()
    row = view.locator(f'tr[data-deployment="student-{tag}"]')
    expect(row.locator(".badge.status-Succeeded")).to_be_visible()
    expect(row).to_contain_text("registered")
    row.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(row.locator(".badge.status-Deleted")).to_be_visible()


def test_cancel_a_job_while_it_is_being_prepared(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    dataset = built_dataset(host, keys["full"], tag)
    # The upstream asks the first upload to wait: the job stays in preparation while the pane cancels it.
    busy = {"error": {"message": "Too many requests", "code": "429"}}
    fake_upstream.script(Reply(status=429, body=busy, headers={"retry-after": "8"}, for_path="/v1/files"))
    with httpx.Client(base_url=host.url, headers={"api-key": keys["full"]}, timeout=30) as http:
        job = http.post(f"/api/datasets/{dataset['id']}/fine_tuning_jobs", json={"model": "gpt-4.1-mini"}).json()
    # Cancel only once the delivery is waiting out the 429 (a cancel before it starts uploads nothing at all).
    deadline = time.monotonic() + 30
    while not any(r["url"].endswith("/v1/files") for r in fake_upstream.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    sign_in(page, host, keys["full"])
    page.goto(f"{host.url}/#fine-tuning/{job['id']}")
    view = page.locator("section.fine-tuning-job")
    view.get_by_role("button", name="Cancel fine-tuning").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    expect(view.locator(".job-facts .badge.status-cancelled")).to_be_visible()
    expect(view.get_by_role("button", name="Cancel fine-tuning")).to_have_count(0)
    # The upload the waiting delivery made after the cancel is deleted upstream too, and no job is created.
    deadline = time.monotonic() + 30
    while not fake_upstream.deleted_files and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake_upstream.deleted_files and fake_upstream.files == {} and fake_upstream.jobs == {}


def test_the_student_against_its_teacher_side_by_side(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    """Registering the student's deployment starts the comparison by itself; the job page shows it side by
    side, with the held-out items the student lost openable on both answers."""
    host, keys = pane_host
    first = store(host, 30, tag=tag)[0]
    # The six questions repeat, so the leakage check keeps each one in the split its first asker went to;
    # a seed that sends the first completion to validation makes sure there are held-out items.
    seed = next(n for n in range(1000) if in_validation(f"c:{first}", seed=n, fraction=0.3))
    with httpx.Client(base_url=host.url, headers={"api-key": keys["full"]}, timeout=30) as http:
        dataset = http.post(
            "/api/datasets",
            json={
                "kind": "distillation",
                "filter": {"metadata": {"tag": tag}},
                "validation_fraction": 0.3,
                "seed": seed,
            },
        ).json()
        deadline = time.monotonic() + 60
        while dataset.get("status") != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
            dataset = http.get(f"/api/datasets/{dataset['id']}").json()
        job = http.post(f"/api/datasets/{dataset['id']}/fine_tuning_jobs", json={"model": "gpt-4.1-mini"}).json()
        while job["status"] != "succeeded" and time.monotonic() < deadline + 60:
            time.sleep(0.2)
            job = http.get(f"/api/fine_tuning_jobs/{job['id']}").json()
        assert job["status"] == "succeeded", job
        wrong = {"role": "assistant", "content": "Please contact our sales team about something unrelated."}
        student = f"student-{tag}"  # earlier tests' comparisons may still be calling the upstream
        # The student answers every call wrongly (the deployment check's pings included: they only need a 200),
        # so it loses each held-out item, however many pings come first.
        (validation,) = [f for f in dataset["files"] if f["name"] == "validation.jsonl"]
        held_out = validation["lines"]
        assert held_out >= 1, dataset
        fake_upstream.script(*[Reply(message=wrong, for_model=student) for _ in range(held_out + 4)])
        registered = http.post(
            f"/api/fine_tuning_jobs/{job['id']}/deployments", json={"name": f"student-{tag}", "existing": True}
        )
        assert registered.status_code == 201 and registered.json()["comparison"]["eval_id"], registered.text

    sign_in(page, host, keys["full"])
    page.goto(f"{host.url}/#fine-tuning/{job['id']}")
    card = page.locator(f'article.comparison[data-deployment="student-{tag}"]')
    expect(card.get_by_role("heading", name=f"Student student-{tag} against its teacher")).to_be_visible()
    row = card.locator('tr[data-criterion="close to the teacher"]')
    expect(row).to_be_visible(timeout=60_000)
    expect(row.locator("td").nth(0)).to_have_text("100.0%")  # the teacher's stored answers match themselves
    expect(row.locator("td.losses")).to_have_text(str(held_out))
    expect(row.locator("td.wins")).to_have_text("0")
    expect(card.get_by_role("heading", name=f"Items the student lost ({held_out})")).to_be_visible()
    lost = card.locator(".lost-items details").first
    lost.locator("summary").click()
    expect(lost.locator(".answer.student")).to_have_text(wrong["content"])
    expect(lost.locator(".answer.teacher")).to_contain_text("fake: ")
    screenshot(page, "student-vs-teacher", full_page=True)
