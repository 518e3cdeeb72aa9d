"""`distillery alias set|show|promote|rollback`: route a name callers use to a teacher and a canary
student, promote the student through the gate, roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from distillery_cli.common import Json, client, fact_grid, print_json, stdout, table, when

app = typer.Typer(
    help="Aliases: canary a student behind a name callers use, promote it, roll back.", no_args_is_help=True
)


def _path(name: str) -> str:
    return f"/api/aliases/{name}"


def _targets(values: list[str]) -> list[dict[str, Any]]:
    """`gpt-4.1=90 student=10` (or one bare deployment: all traffic) as the API's targets."""
    if len(values) == 1 and "=" not in values[0]:
        return [{"deployment": values[0], "share": 100}]
    targets = []
    for value in values:
        deployment, _, share = value.partition("=")
        if not deployment or not share.isdigit():
            raise typer.BadParameter(f"'{value}' is not DEPLOYMENT=SHARE (a whole percent)", param_hint="TARGETS")
        targets.append({"deployment": deployment, "share": int(share)})
    return targets


def _sticky(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    if value == "user":
        return {"by": "user"}
    if value.startswith("metadata:") and len(value) > len("metadata:"):
        return {"by": "metadata", "key": value[len("metadata:") :]}
    raise typer.BadParameter("'user' or 'metadata:<key>'", param_hint="--sticky")


def _show(alias: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(alias)
        return
    facts = fact_grid()
    sticky = alias.get("sticky")
    gate = alias["gate"]
    rows = {
        "alias": alias["name"],
        "targets": ", ".join(f"{t['deployment']} {t['share']}%" for t in alias["targets"]),
        "fallback": alias["fallback"],
        "sticky": "-" if not sticky else (sticky["by"] if sticky["by"] == "user" else f"metadata:{sticky['key']}"),
        "gate": f"pass rate >= {gate['min_pass_rate']:.0%}, at most {gate['max_drop']:.0%} below the teacher",
        "online evals": _online(alias.get("online_eval")),
        "updated (UTC)": when(alias.get("updated_at")),
    }
    for name, value in rows.items():
        facts.add_row(name, str(value))
    console = stdout()
    console.print(facts)
    history = table("time (UTC)", "by", "change", "targets", "gate")
    for change in alias.get("history") or []:
        result = change.get("gate_result")
        verdict = (
            "-"
            if result is None
            else ("passed" if result["passed"] else "failed") + (" (forced)" if change.get("forced") else "")
        )
        history.add_row(
            when(change["at"]),
            change["by"],
            change["action"] + (" (automatic)" if change.get("automatic") else ""),
            ", ".join(f"{t['deployment']} {t['share']}%" for t in change["targets"]),
            verdict,
        )
    console.print(history)


def _online(online: dict[str, Any] | None) -> str:
    if not online:
        return "-"
    alert = online.get("alert")
    rolls = "" if not alert else f"; rolls back under {alert['min_pass_rate']:.0%} over {alert['window_hours']} h"
    return f"{online['sample_rate']:.0%} of stored calls, {len(online['testing_criteria'])} graders{rolls}"


Reason = Annotated[str | None, typer.Option(help="Why, kept in the alias's history.")]


@app.command("set")
def set_alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The name callers use as their deployment.")],
    targets: Annotated[list[str], typer.Argument(metavar="TARGETS", help="DEPLOYMENT=SHARE, one or two (sum 100).")],
    sticky: Annotated[str | None, typer.Option(help="Keep a caller on one deployment: user or metadata:<key>.")] = None,
    min_pass_rate: Annotated[float | None, typer.Option(min=0, max=1, help="Gate: each criterion's pass rate.")] = None,
    max_drop: Annotated[float | None, typer.Option(min=0, max=1, help="Gate: most a pass rate may fall.")] = None,
    online_eval: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A JSON file: {sample_rate, testing_criteria, alert} to grade live calls online ('null' turns it off).",
        ),
    ] = None,
    reason: Reason = None,
    json_output: Json = False,
) -> None:
    """Create or change an alias, e.g. `alias set support-bot gpt-4.1=90 docs-student=10 --sticky user`."""
    body: dict[str, Any] = {"targets": _targets(targets)}
    if (rule := _sticky(sticky)) is not None:
        body["sticky"] = rule
    gate = {k: v for k, v in {"min_pass_rate": min_pass_rate, "max_drop": max_drop}.items() if v is not None}
    if gate:
        body["gate"] = gate
    if online_eval is not None:
        try:
            body["online_eval"] = json.loads(online_eval.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--online-eval") from None
    if reason is not None:
        body["reason"] = reason
    _show(client(ctx).request("PUT", _path(name), json=body), json_output)


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")], json_output: Json = False) -> None:
    """An alias: targets, fallback, sticky rule, gate, its history of changes and its online pass rates."""
    api = client(ctx)
    alias = api.get(_path(name))
    _show(alias, json_output)
    if alias.get("online_eval") and not json_output:
        online = api.get(f"{_path(name)}/online_evals")
        rates = table("deployment (last 24 h)", "pass rate", "passed", "failed", "errored")
        for row in online["data"]:
            rate = "-" if row["pass_rate"] is None else f"{row['pass_rate']:.1%}"
            rates.add_row(row["deployment"], rate, str(row["passed"]), str(row["failed"]), str(row["errored"]))
        stdout().print(rates)


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    deployment: Annotated[str | None, typer.Option(help="The target to promote (default: the canary).")] = None,
    eval_id: Annotated[str | None, typer.Option("--eval", help="The comparison's eval.")] = None,
    teacher_run: Annotated[str | None, typer.Option(help="The teacher's run of that eval.")] = None,
    student_run: Annotated[str | None, typer.Option(help="The student's run of that eval.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even when the gate fails (recorded).")] = False,
    reason: Reason = None,
    json_output: Json = False,
) -> None:
    """Give one target all traffic, once its comparison with the teacher passes the alias's gate."""
    body: dict[str, Any] = {"force": force}
    runs = (eval_id, teacher_run, student_run)
    if any(runs):
        if not all(runs):
            raise typer.BadParameter("give --eval, --teacher-run and --student-run together", param_hint="--eval")
        body["comparison"] = {"eval_id": eval_id, "teacher_run_id": teacher_run, "student_run_id": student_run}
    body.update({k: v for k, v in {"deployment": deployment, "reason": reason}.items() if v is not None})
    _show(client(ctx).post(f"{_path(name)}/promote", body), json_output)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    reason: Reason = None,
    json_output: Json = False,
) -> None:
    """Send all of the alias's traffic back to its fallback (the teacher)."""
    body = {} if reason is None else {"reason": reason}
    _show(client(ctx).post(f"{_path(name)}/rollback", body), json_output)
