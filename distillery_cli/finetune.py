"""`distillery finetune start|show|cancel|deploy`: Distill a dataset into a fine-tuned model, follow
the job, and deploy the student."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from distillery_cli.client import DistilleryClient
from distillery_cli.common import (
    Json,
    Wait,
    client,
    fact_grid,
    print_json,
    problems,
    stderr,
    stdout,
    submit_job,
    table,
    wait_until,
    when,
)

app = typer.Typer(help="Fine-tune a model on a distillation dataset, follow it, deploy it.", no_args_is_help=True)

FINISHED = ("succeeded", "failed", "cancelled")
PROVISIONED = ("Succeeded", "Failed", "Canceled", "Disabled", "Deleted")
EVENTS_SHOWN = 8


def _path(job_id: str) -> str:
    return f"/api/fine_tuning_jobs/{job_id}"


def _json_object(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        raise typer.BadParameter("must be a JSON object", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return parsed


def wait_for_job(api: DistilleryClient, job_id: str) -> dict[str, Any]:
    """Poll until the job succeeded, failed or was cancelled; status and stage on stderr."""

    def progress(job: dict[str, Any]) -> tuple[str, int, int | None]:
        stage = f" ({job['stage']})" if job.get("stage") else ""
        return f"{job_id} {job['status']}{stage}", len(job.get("events") or []), None

    return wait_until(lambda: api.get(_path(job_id)), finished=lambda job: job["status"] in FINISHED, progress=progress)


def loss_points(job: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, training loss) from the job's checkpoints, in step order."""
    points = []
    for checkpoint in job.get("checkpoints") or []:
        loss = (checkpoint.get("metrics") or {}).get("train_loss")
        if isinstance(loss, int | float) and isinstance(checkpoint.get("step_number"), int):
            points.append((checkpoint["step_number"], float(loss)))
    return sorted(points)


def _show(job: dict[str, Any]) -> None:
    facts = fact_grid()
    params = job.get("params") or {}
    rows = {
        "id": job["id"],
        "dataset": job.get("dataset_id"),
        "status": job["status"] + (f" ({job['stage']})" if job.get("stage") else ""),
        "base model": job.get("model"),
        "training type": params.get("training_type") or "-",
        "suffix / seed": f"{params.get('suffix') or '-'} / {params.get('seed') if params.get('seed') is not None else '-'}",
        "upstream job": job.get("upstream_job_id") or "-",
        "fine-tuned model": job.get("fine_tuned_model") or "-",
        "trained tokens": job.get("trained_tokens") or "-",
        "files": ", ".join(f"{name}={file_id}" for name, file_id in (job.get("lineage") or {}).get("files", {}).items())
        or "-",
        "created (UTC)": when(job.get("created_at")),
    }
    if job.get("files_deleted_at"):
        rows["files deleted (UTC)"] = when(job["files_deleted_at"])
    if job.get("error"):
        error = job["error"]
        rows["error"] = f"{error.get('code')}: {error.get('message')}" + (
            f" — {error['hint']}" if error.get("hint") else ""
        )
    for name, value in rows.items():
        facts.add_row(name, str(value))
    console = stdout()
    console.print(facts)
    if points := loss_points(job):
        losses = table("step", "training loss")
        for step, loss in points:
            losses.add_row(str(step), f"{loss:.4f}")
        console.print(losses)
    if events := job.get("events"):
        listing = table("time (UTC)", "level", "event")
        for event in sorted(events, key=lambda e: e.get("created_at") or 0)[-EVENTS_SHOWN:]:
            listing.add_row(when(event.get("created_at")), str(event.get("level") or ""), str(event.get("message")))
        console.print(listing)
    if deployments := job.get("deployments"):
        console.print(_deployments_table(deployments))


def _deployments_table(deployments: list[dict[str, Any]]) -> Any:
    listing = table("deployment", "state", "sku", "capacity", "how")
    for deployment in deployments:
        listing.add_row(
            deployment["name"],
            deployment["provisioning_state"],
            str(deployment.get("sku") or "-"),
            str(deployment.get("capacity") or "-"),
            "created here" if deployment.get("managed") else "registered",
        )
    return listing


def _finish(job: dict[str, Any], json_output: bool, *, expected: tuple[str, ...] = ("succeeded",)) -> None:
    if json_output:
        print_json(job)
    else:
        _show(job)
    if job["status"] in FINISHED and job["status"] not in expected:
        raise problems(f"fine-tuning job {job['id']} {job['status']}")


@app.command("start")
def start(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="DATASET_ID", help="A succeeded distillation dataset.")],
    model: Annotated[str, typer.Option("--model", help="The base model, e.g. gpt-4.1-mini-2025-04-14.")],
    training_type: Annotated[
        str | None, typer.Option(help="Azure OpenAI: globalstandard, standard or developer (ignored elsewhere).")
    ] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the fine-tuned model's name (no '.').")] = None,
    seed: Annotated[int | None, typer.Option(help="Makes the job reproducible.")] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Supervised epochs (method.supervised.hyperparameters).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help='The job\'s "method" as JSON, e.g. {"type": "supervised"}.')
    ] = None,
    hyperparameters: Annotated[str | None, typer.Option(help="The older hyperparameters object, as JSON.")] = None,
    validation: Annotated[bool, typer.Option(help="Send the dataset's validation file too.")] = True,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Start fine-tuning a base model on a distillation dataset (files are checked and uploaded on the queue)."""
    method_body = _json_object(method, "--method")
    if epochs is not None:
        if method_body is not None or hyperparameters is not None:
            raise typer.BadParameter("give --epochs, --method or --hyperparameters, one of them", param_hint="--epochs")
        method_body = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}
    body: dict[str, Any] = {"model": model, "validation": validation}
    optional = {
        "training_type": training_type,
        "suffix": suffix,
        "seed": seed,
        "method": method_body,
        "hyperparameters": _json_object(hyperparameters, "--hyperparameters"),
    }
    body.update({field: value for field, value in optional.items() if value is not None})
    path = f"/api/datasets/{dataset_id}/fine_tuning_jobs"
    _finish(submit_job(client(ctx), path, body, wait=wait, wait_for=wait_for_job), json_output)


@app.command("show")
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Show a job, refreshed from the upstream: status, events, training loss, fine-tuned model, deployments."""
    api = client(ctx)
    job = wait_for_job(api, job_id) if wait else api.get(_path(job_id))
    _finish(job, json_output)


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Cancel a job (on the upstream once it has an upstream job); --wait until it has stopped."""
    api = client(ctx)
    job = api.post(f"{_path(job_id)}/cancel", {})
    if wait:
        job = wait_for_job(api, job_id)
    _finish(job, json_output, expected=("cancelled",))


@app.command("deploy")
def deploy(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str | None, typer.Option(help="The deployment name callers will use.")] = None,
    sku: Annotated[str | None, typer.Option(help="e.g. DeveloperTier, Standard, GlobalStandard.")] = None,
    capacity: Annotated[int | None, typer.Option(min=1, help="Thousands of tokens per minute.")] = None,
    existing: Annotated[
        bool, typer.Option("--existing", help="Register a deployment made elsewhere (needs --name).")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until Azure has provisioned it.")] = False,
    json_output: Json = False,
) -> None:
    """Deploy a succeeded job's fine-tuned model on the Azure OpenAI account, or register an existing deployment."""
    body: dict[str, Any] = {"existing": existing}
    body.update({k: v for k, v in {"name": name, "sku": sku, "capacity": capacity}.items() if v is not None})
    api = client(ctx)
    deployment = api.post(f"{_path(job_id)}/deployments", body)
    if wait:
        path = f"{_path(job_id)}/deployments/{deployment['name']}"
        deployment = wait_until(
            lambda: api.get(path),
            finished=lambda d: d["provisioning_state"] in PROVISIONED,
            progress=lambda d: (f"{d['name']} {d['provisioning_state']}", 0, None),
        )
    if json_output:
        print_json(deployment)
    else:
        stdout().print(_deployments_table([deployment]))
        if deployment.get("error"):
            stderr().print(f"{deployment['error'].get('message')} {deployment['error'].get('hint') or ''}")
    if deployment["provisioning_state"] in ("Failed", "Canceled", "Disabled"):
        raise problems(f"deployment {deployment['name']} {deployment['provisioning_state']}")
