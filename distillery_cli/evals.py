"""`distillery eval create` (an eval definition in OpenAI's shape, from a JSON or YAML file) and `distillery eval
run` (start a run; with `--min-pass-rate`, a regression gate for CI)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from distillery_cli.client import DistilleryClient
from distillery_cli.common import (
    EXIT_USAGE,
    CommandFailed,
    CreatedAfter,
    CreatedBefore,
    Json,
    Metadata,
    Wait,
    client,
    completion_filter,
    print_json,
    problems,
    stdout,
    submit_job,
    table,
    wait_until,
)

app = typer.Typer(help="Run evals (OpenAI Evals API) on stored completions or dataset files.", no_args_is_help=True)

FINISHED = ("completed", "failed", "canceled")
STORED = "stored_completions"
_DATASET_FILE = re.compile(r"^dataset-[0-9a-f]{32}/[A-Za-z0-9._-]+\.jsonl$")


def data_source(
    data: str,
    *,
    model: str | None,
    input_ref: str,
    selection: dict[str, Any],
    limit: int | None,
) -> dict[str, Any]:
    """The run's `completions` data source for --data: stored completions, a dataset file id, or a local JSONL file."""
    source: dict[str, Any]
    if data == STORED:
        source = {"type": STORED, **selection, **({"limit": limit} if limit else {})}
    elif selection or limit:
        raise typer.BadParameter(f"filters and --limit apply to --data {STORED} only", param_hint="--data")
    elif _DATASET_FILE.match(data):
        source = {"type": "file_id", "id": data}
    elif Path(data).is_file():
        source = {"type": "file_content", "content": _rows(Path(data))}
    else:
        raise typer.BadParameter(
            f"'{data}' is neither '{STORED}', a dataset file id (dataset-…/eval.jsonl) nor a JSONL file",
            param_hint="--data",
        )
    body: dict[str, Any] = {"type": "completions", "source": source}
    if model is not None:
        body["model"] = model
        if source["type"] != STORED:
            body["input_messages"] = {"type": "item_reference", "item_reference": input_ref}
    return body


def _rows(path: Path) -> list[dict[str, Any]]:
    """`{item, sample?}` rows of a JSONL file; a line without `item` is the item itself."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise CommandFailed(
                f"{path}:{number}: not JSON", exit_code=EXIT_USAGE, type="usage_error", param="--data"
            ) from None
        rows.append(row if isinstance(row, dict) and "item" in row else {"item": row})
    return rows


def wait_for_run(api: DistilleryClient, eval_id: str, run_id: str) -> dict[str, Any]:
    def progress(run: dict[str, Any]) -> tuple[str, int, int | None]:
        extra = run.get("distillery") or {}
        return f"{run_id} {run['status']}", extra.get("items_graded") or 0, extra.get("items_total")

    return wait_until(
        lambda: api.get(f"/api/evals/{eval_id}/runs/{run_id}"),
        finished=lambda run: run["status"] in FINISHED,
        progress=progress,
    )


def _show(run: dict[str, Any]) -> None:
    counts = run.get("result_counts") or {}
    console = stdout()
    console.print(
        f"run {run['id']} of {run['eval_id']}: {run['status']}, model {run.get('model')}; "
        f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, {counts.get('errored', 0)} errored "
        f"of {counts.get('total', 0)}"
    )
    if (run.get("error") or {}).get("code"):
        console.print(f"error {run['error']['code']}: {run['error']['message']}")
    criteria = run.get("per_testing_criteria_results") or []
    if criteria:
        results = table("criterion", "passed", "failed")
        for result in criteria:
            results.add_row(result["testing_criteria"], str(result["passed"]), str(result["failed"]))
        console.print(results)
    if run.get("report_url"):
        console.print(f"report: {run['report_url'].split('/api/evals/')[0]}/#evals/{run['eval_id']}/{run['id']}")


@app.command("run")
def run_eval(
    ctx: typer.Context,
    eval_id: Annotated[str, typer.Argument(metavar="EVAL_ID")],
    data: Annotated[
        str,
        typer.Option(
            help=f"'{STORED}' (with the filters below), a dataset file id 'dataset-…/eval.jsonl', or a local JSONL file of {{item, sample?}} rows."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Deployment that answers each item; omitted: grade the answers the data already holds."),
    ] = None,
    input_ref: Annotated[
        str, typer.Option(help="With --model on file data: the item field holding the messages.")
    ] = "item.input",
    source_model: Annotated[str | None, typer.Option(help=f"{STORED}: completions of this model only.")] = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Annotated[int | None, typer.Option(min=1, help=f"{STORED}: at most this many items.")] = None,
    name: Annotated[str | None, typer.Option(help="The run's name.")] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option(min=1, help="Stop the run once its calls used this many tokens.")
    ] = None,
    wait: Wait = False,
    min_pass_rate: Annotated[
        list[str] | None,
        typer.Option(
            help="Fail (exit 3) below this pass rate: '0.9' over all items, or 'CRITERION=0.9' for one criterion "
            "(repeatable). Implies --wait."
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Start a run of EVAL_ID; with --wait, follow it to the end (exit 3 when it fails, is cancelled, or
    passes fewer items than --min-pass-rate asks)."""
    bars = _pass_rate_bars(min_pass_rate or [])
    wait = wait or bool(bars)
    selection = completion_filter(source_model, metadata, created_after, created_before)
    body: dict[str, Any] = {
        "data_source": data_source(data, model=model, input_ref=input_ref, selection=selection, limit=limit)
    }
    body.update(
        {
            field: value
            for field, value in {"name": name, "max_total_tokens": max_total_tokens}.items()
            if value is not None
        }
    )
    run = submit_job(
        client(ctx),
        f"/api/evals/{eval_id}/runs",
        body,
        wait=wait,
        wait_for=lambda api, run_id: wait_for_run(api, eval_id, run_id),
    )
    if json_output:
        print_json(run)
    else:
        _show(run)
    if run["status"] in ("failed", "canceled"):
        raise problems(f"run {run['id']} {run['status']}")
    below = _below_bars(run, bars)
    if below:
        raise problems(f"run {run['id']} is below the bar: " + "; ".join(below))


def _pass_rate_bars(values: list[str]) -> dict[str | None, float]:
    """`--min-pass-rate` values: criterion name (None: every item) -> the lowest pass rate accepted."""
    bars: dict[str | None, float] = {}
    for value in values:
        criterion, _, rate = value.rpartition("=")
        try:
            bar = float(rate)
        except ValueError:
            bar = -1.0
        if not 0 <= bar <= 1:
            raise typer.BadParameter(
                f"'{value}' is not a rate from 0 to 1 (or CRITERION=rate)", param_hint="--min-pass-rate"
            )
        bars[criterion or None] = bar
    return bars


def _below_bars(run: dict[str, Any], bars: dict[str | None, float]) -> list[str]:
    """What falls short: the overall pass rate (passed / total) and each named criterion's (passed / graded)."""
    below = []
    counts = run.get("result_counts") or {}
    per_criterion = {r["testing_criteria"]: r for r in run.get("per_testing_criteria_results") or []}
    for criterion, bar in bars.items():
        if criterion is None:
            passed, total, what = counts.get("passed", 0), counts.get("total", 0), "overall"
        elif criterion in per_criterion:
            result = per_criterion[criterion]
            passed, total, what = result["passed"], result["passed"] + result["failed"], f"'{criterion}'"
        else:
            below.append(f"no criterion named '{criterion}'")
            continue
        rate = passed / total if total else 0.0
        if rate < bar:
            below.append(f"{what} pass rate {rate:.3f} < {bar}")
    return below


@app.command("create")
def create_eval(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="The eval as JSON or YAML.")
    ],
    json_output: Json = False,
) -> None:
    """Create an eval from FILE: the body of OpenAI's evals.create (name, data_source_config, testing_criteria)."""
    body = _definition(path)
    created = client(ctx).post("/api/evals", body)
    if json_output:
        print_json(created)
    else:
        stdout().print(
            f"{created['id']} {created.get('name', '')}: {len(created.get('testing_criteria') or [])} criteria"
        )


def _definition(path: Path) -> dict[str, Any]:
    """The eval in FILE, JSON or YAML (JSON is YAML too, but its own parser names the error precisely)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            # safe_load: a definition is data; a YAML tag must never construct Python objects.
            body = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CommandFailed(
                f"{path}: not YAML ({exc})", exit_code=EXIT_USAGE, type="usage_error", param="FILE"
            ) from None
    else:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise CommandFailed(
                f"{path}: not JSON ({exc}); YAML files end in .yaml or .yml",
                exit_code=EXIT_USAGE,
                type="usage_error",
                param="FILE",
            ) from None
    if not isinstance(body, dict):
        raise CommandFailed(
            f"{path}: the eval must be an object (name, data_source_config, testing_criteria)",
            exit_code=EXIT_USAGE,
            type="usage_error",
            param="FILE",
        )
    return body
