"""`distillery datasets create|show|download`: dataset jobs built on the service's queue."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from distillery_cli.client import ApiError, DistilleryClient
from distillery_cli.common import (
    CommandFailed,
    CreatedAfter,
    CreatedBefore,
    Json,
    Metadata,
    Model,
    Wait,
    client,
    completion_filter,
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

app = typer.Typer(help="Build JSONL datasets from stored completions, and download them.", no_args_is_help=True)

FINISHED = ("succeeded", "failed")
MANIFEST = "manifest.json"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A dataset file name as the service writes them (train.jsonl): no separator, no `..`, no drive, not absolute."""


def _path(dataset_id: str) -> str:
    return f"/api/datasets/{dataset_id}"


def wait_for_dataset(api: DistilleryClient, dataset_id: str) -> dict[str, Any]:
    """Poll until the dataset succeeded or failed, with its progress on stderr."""

    def progress(job: dict[str, Any]) -> tuple[str, int, int | None]:
        done = (job.get("progress") or {}).get("processed") or 0
        return f"{dataset_id} {job['status']}", done, (job.get("progress") or {}).get("total")

    return wait_until(
        lambda: api.get(_path(dataset_id)), finished=lambda job: job["status"] in FINISHED, progress=progress
    )


def _show(job: dict[str, Any]) -> None:
    facts = fact_grid()
    counts = job.get("counts") or {}
    skipped = counts.get("skipped") or {}
    rows = {
        "id": job["id"],
        "kind": job.get("kind"),
        "name": job.get("name") or "-",
        "status": job.get("status"),
        "selection": json.dumps(job["filter"]) if job.get("filter") else f"{job.get('ids_count')} ids",
        "created (UTC)": when(job.get("created_at")),
        "finished (UTC)": when(job.get("finished_at")),
        "selected / written": f"{counts.get('selected', 0)} / {counts.get('written', 0)}",
        "skipped": ", ".join(f"{reason}={n}" for reason, n in skipped.items() if n) or "-",
        "rebuilds": job.get("rebuilds", 0),
    }
    if job.get("error"):
        rows["error"] = f"{job['error'].get('code')}: {job['error'].get('message')}"
    for name, value in rows.items():
        facts.add_row(name, str(value))
    console = stdout()
    console.print(facts)
    if job.get("files"):
        files = table("file", "lines", "bytes", "tokens", "sha256")
        for file in job["files"]:
            files.add_row(
                file["name"],
                str(file.get("lines")),
                str(file.get("bytes")),
                str(file.get("tokens")),
                file.get("sha256") or "",
            )
        console.print(files)


def _finish(job: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(job)
    else:
        _show(job)
    if job["status"] == "failed":
        raise problems(f"dataset {job['id']} failed")


@app.command("create")
def create_dataset(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="distillation (fine-tuning files) or evaluation (an Evals data source).")],
    model: Model = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    ids_file: Annotated[
        Path | None,
        typer.Option(
            help="Instead of filters: a file of completion ids, one a line (≤ 5,000).", exists=True, dir_okay=False
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label.")] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="Distillation: 0-0.5 (default 0.1).")] = None,
    seed: Annotated[int | None, typer.Option(help="Which groups land in validation (default 0).")] = None,
    group_by: Annotated[str | None, typer.Option(help="Distillation: a metadata key kept in one file.")] = None,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Queue a dataset job over a selection of stored completions."""
    body: dict[str, Any] = {"kind": kind}
    selection = completion_filter(model, metadata, created_after, created_before)
    if ids_file is not None:
        if selection:
            raise typer.BadParameter("give filters or --ids-file, not both", param_hint="--ids-file")
        body["ids"] = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    else:
        body["filter"] = selection
    optional = {"name": name, "validation_fraction": validation_fraction, "seed": seed, "group_by": group_by}
    body.update({field: value for field, value in optional.items() if value is not None})
    _finish(submit_job(client(ctx), "/api/datasets", body, wait=wait, wait_for=wait_for_dataset), json_output)


@app.command("show")
def show_dataset(
    ctx: typer.Context, dataset_id: Annotated[str, typer.Argument(metavar="ID")], json_output: Json = False
) -> None:
    """Show a dataset: status, counts, skip reasons and files."""
    job = client(ctx).get(_path(dataset_id))
    if json_output:
        print_json(job)
    else:
        _show(job)


def _plain_name(name: Any) -> str:
    """A file name from the service, refused unless it is a plain name: the files land under --out only."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise ApiError(
            f"The service named a dataset file {name!r}, which is not a plain file name; nothing was written."
        )
    return name


@app.command("download")
def download_dataset(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory (default ./ID).", file_okay=False)] = None,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Download a finished dataset's files and manifest, each checked against its sha256."""
    api = client(ctx)
    job = wait_for_dataset(api, dataset_id) if wait else api.get(_path(dataset_id))
    if job["status"] == "failed":
        _finish(job, json_output)
    if job["status"] != "succeeded":
        raise CommandFailed(f"dataset {dataset_id} is {job['status']}, not finished: pass --wait", code="not_finished")
    expected = {_plain_name(file["name"]): file for file in job["files"]}
    directory = out or Path(dataset_id)
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=stderr()) as progress:
        for name in [*expected, MANIFEST]:
            target = directory / name
            digest = hashlib.sha256()
            task = progress.add_task(name, total=expected[name]["bytes"] if name in expected else None)
            partial = target.with_name(target.name + ".part")
            with api.stream(f"{_path(dataset_id)}/files/{name}") as response, partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
            if name in expected and expected[name].get("sha256") and digest.hexdigest() != expected[name]["sha256"]:
                partial.unlink()
                raise CommandFailed(
                    f"{name}: sha256 {digest.hexdigest()} is not the dataset's {expected[name]['sha256']}",
                    code="checksum_mismatch",
                )
            partial.replace(target)
            saved.append(
                {"name": name, "path": str(target), "bytes": target.stat().st_size, "sha256": digest.hexdigest()}
            )
    if json_output:
        print_json({"dataset": dataset_id, "files": saved})
        return
    listing = table("file", "bytes", "sha256")
    for row in saved:
        listing.add_row(row["path"], str(row["bytes"]), row["sha256"])
    stdout().print(listing)
