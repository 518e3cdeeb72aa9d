"""`distillery completions list|show|delete|bulk|relabel`: the stored-completions API, bulk actions and
relabel jobs on a filter."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from distillery_cli.client import COMPLETIONS_PATH, PAGE_LIMIT, RESPONSES_PATH, DistilleryClient
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
    completion_query,
    fact_grid,
    parse_pairs,
    print_json,
    problems,
    stderr,
    stdout,
    submit_job,
    table,
    wait_until,
    when,
)

app = typer.Typer(
    help="List, show and delete stored chat completions and responses; tag or score a filter in bulk.",
    no_args_is_help=True,
)

Order = Annotated[str, typer.Option(help="asc (oldest first) or desc (newest first).", case_sensitive=False)]


def answer_text(completion: dict[str, Any]) -> str:
    """The first choice's text, or its tool calls' names (a response: its text, or its function calls' names)."""
    if completion.get("object") == "response":
        texts = [_item_text(item) for item in completion.get("output") or [] if item.get("type") == "message"]
        if "".join(texts):
            return "".join(texts)
        calls = [item for item in completion.get("output") or [] if item.get("type") == "function_call"]
        return ", ".join(f"{call.get('name')}(…)" for call in calls)
    choices = completion.get("choices") or []
    if not choices:
        return ""
    message = choices[0].get("message") or {}
    if message.get("content"):
        return str(message["content"])
    calls = message.get("tool_calls") or []
    return ", ".join(f"{call.get('function', {}).get('name')}(…)" for call in calls)


def _item_text(item: dict[str, Any]) -> str:
    """A Responses item as one line: a message's text, a function call, its output, or its type."""
    kind = item.get("type")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            return content
        return "".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))
    if kind == "function_call":
        return f"{item.get('name')}({item.get('arguments', '')})"
    if kind == "function_call_output":
        return str(item.get("output", ""))
    if kind == "reasoning":  # its summary, when the model gave one
        summary = " ".join(str(part.get("text", "")) for part in item.get("summary") or [] if isinstance(part, dict))
        return f"[reasoning] {summary}".strip()
    return f"[{kind}]"


def _path(completion_id: str) -> str:
    return RESPONSES_PATH if completion_id.startswith("resp_") else COMPLETIONS_PATH


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _pairs(metadata: dict[str, str] | None, separator: str = ", ") -> str:
    return separator.join(f"{key}={value}" for key, value in (metadata or {}).items())


_GAP = 3
"""Columns of `table()` are this far apart."""
_ANSWER_MIN = 20


def _listing(found: list[dict[str, Any]], width: int) -> Table:
    """The list's table for a terminal `width` wide: the id and the answer always, then created, model and
    metadata while their widest cell still fits (an 80-column terminal keeps one line per completion)."""
    id_width = max((len(c["id"]) for c in found), default=2)
    pairs = [f"{key}={value}" for c in found for key, value in (c.get("metadata") or {}).items()]
    optional = [
        (Column("created (UTC)", no_wrap=True), 19),
        (Column("model", no_wrap=True), max((len(str(c.get("model", ""))) for c in found), default=5)),
        (Column("metadata", overflow="fold"), min(40, max(map(len, pairs), default=8))),
    ]
    used = id_width + _GAP + _ANSWER_MIN
    shown = []
    for column, needed in optional:
        if used + _GAP + needed <= width:
            used += _GAP + needed
            column.min_width = needed
            shown.append(column)
    return table(
        Column("id", no_wrap=True, min_width=id_width), *shown, Column("answer", ratio=1, min_width=_ANSWER_MIN)
    )


@app.command("list")
def list_completions(
    ctx: typer.Context,
    model: Model = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Annotated[int, typer.Option(min=1, help="Most completions to show (pages are followed).")] = 20,
    order: Order = "desc",
    after: Annotated[str | None, typer.Option(help="Start after this completion id (a cursor).")] = None,
    kind: Annotated[
        str | None, typer.Option(help="chat.completion or response only (default: both).", case_sensitive=False)
    ] = None,
    json_output: Json = False,
) -> None:
    """List stored completions and responses matching every filter, newest first by default."""
    if order.lower() not in ("asc", "desc"):
        raise typer.BadParameter("must be asc or desc", param_hint="--order")
    if kind is not None and kind.lower() not in ("chat.completion", "response"):
        raise typer.BadParameter("must be chat.completion or response", param_hint="--kind")
    query = completion_query(completion_filter(model, metadata, created_after, created_before))
    query.append(("kind", kind.lower() if kind is not None else "all"))
    query += [("order", order.lower()), ("limit", min(limit, PAGE_LIMIT))]
    found: list[dict[str, Any]] = []
    more = False
    for page, more in client(ctx).pages(COMPLETIONS_PATH, query, after=after):
        found += page
        if len(found) >= limit:
            more = more or len(found) > limit
            break
    found = found[:limit]
    if json_output:
        print_json({"object": "list", "data": found, "has_more": more})
        return
    console = stdout()
    listing = _listing(found, console.width)
    cells = [
        {
            "id": completion["id"],
            "created (UTC)": when(completion.get("created") or completion.get("created_at")),
            "model": completion.get("model", ""),
            "metadata": _pairs(completion.get("metadata"), "\n"),
            "answer": _short(answer_text(completion)),
        }
        for completion in found
    ]
    for row in cells:
        listing.add_row(*(row[str(column.header)] for column in listing.columns))
    console.print(listing)
    note = f"{len(found)} completion(s)"
    if found and more:
        note += f"; more: --after {found[-1]['id']}"
    stderr().print(note)


@app.command("show")
def show_completion(
    ctx: typer.Context, completion_id: Annotated[str, typer.Argument(metavar="ID")], json_output: Json = False
) -> None:
    """Show one stored completion or response: its conversation, answer (function calls too), metadata and usage."""
    api = client(ctx)
    responses = completion_id.startswith("resp_")
    completion = api.get(f"{_path(completion_id)}/{completion_id}")
    listed = (
        f"{RESPONSES_PATH}/{completion_id}/input_items" if responses else f"{COMPLETIONS_PATH}/{completion_id}/messages"
    )
    pages = api.pages(listed, [("limit", PAGE_LIMIT), *([("order", "asc")] if responses else [])])
    messages = [message for page, _ in pages for message in page]
    if json_output:
        print_json({**completion, ("input_items" if responses else "input_messages"): messages})
        return
    usage = completion.get("usage") or {}
    facts = fact_grid()
    facts.add_row("id", completion["id"])
    facts.add_row("created (UTC)", when(completion.get("created") or completion.get("created_at")))
    facts.add_row("model", str(completion.get("model", "")))
    facts.add_row("metadata", _pairs(completion.get("metadata")) or "-")
    prompt = usage.get("input_tokens" if responses else "prompt_tokens", 0)
    answer = usage.get("output_tokens" if responses else "completion_tokens", 0)
    facts.add_row("usage", f"{prompt} prompt + {answer} completion tokens")
    console = stdout()
    console.print(facts)
    conversation = table("role", "content")
    for message in messages:
        if responses:
            conversation.add_row(str(message.get("role") or message.get("type")), _item_text(message))
        else:
            conversation.add_row(str(message.get("role")), str(message.get("content") or ""))
    if responses:
        for item in completion.get("output") or []:
            conversation.add_row(f"answer ({item.get('type')})", _item_text(item), style="green")
    else:
        finish = ((completion.get("choices") or [{}])[0]).get("finish_reason")
        conversation.add_row(f"answer ({finish})", answer_text(completion), style="green")
    console.print(conversation)


@app.command("delete")
def delete_completion(
    ctx: typer.Context,
    completion_id: Annotated[str, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: Json = False,
) -> None:
    """Delete a stored completion (its document and index rows)."""
    if not yes and not typer.confirm(f"Delete {completion_id}?", err=True):
        raise CommandFailed("Nothing deleted: the deletion was not confirmed.", code="not_confirmed")
    deleted = client(ctx).delete(f"{_path(completion_id)}/{completion_id}")
    if json_output:
        print_json(deleted)
    else:
        stdout().print(f"deleted {deleted['id']}")


def _wait_for_filter_job(api: DistilleryClient, job_id: str, *, collection: str, counted: str) -> dict[str, Any]:
    """Poll a bulk action or relabel job until it succeeded or failed, counting its `progress.<counted>`."""

    def progress(state: dict[str, Any]) -> tuple[str, int, int | None]:
        return f"{job_id} {state['status']}", (state.get("progress") or {}).get(counted) or 0, None

    return wait_until(
        lambda: api.get(f"/api/{collection}/{job_id}"),
        finished=lambda state: state["status"] in ("succeeded", "failed"),
        progress=progress,
    )


def _score_value(text: str) -> bool | float | str:
    """`true`/`false` a boolean, a number a number, anything else a label (as the list API's `scores.` filter)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


@app.command("bulk")
def bulk_action(
    ctx: typer.Context,
    model: Model = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    every: Annotated[bool, typer.Option("--all", help="Every stored completion (no filter).")] = False,
    set_pairs: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Metadata pair to set (repeatable).")
    ] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", metavar="KEY", help="Metadata key to remove.")] = None,
    score: Annotated[
        list[str] | None,
        typer.Option("--score", metavar="NAME=VALUE", help="Score to add: true/false, a number or a label."),
    ] = None,
    unscore: Annotated[list[str] | None, typer.Option("--unscore", metavar="NAME", help="Score to remove.")] = None,
    source: Annotated[str, typer.Option(help="The added scores' source: human, model or rule.")] = "human",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would change; change nothing.")] = False,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Set or remove metadata and scores on every completion matching the filter, as a queued job."""
    selection = completion_filter(model, metadata, created_after, created_before)
    body: dict[str, Any] = {"filter": selection} if selection else {"all": every}
    body |= {
        "set_metadata": parse_pairs(set_pairs, "--set"),
        "remove_metadata": unset or [],
        "add_scores": [
            {"name": name, "value": _score_value(value), "source": source}
            for name, value in parse_pairs(score, "--score").items()
        ],
        "remove_scores": unscore or [],
        "dry_run": dry_run,
    }
    wait_for = partial(_wait_for_filter_job, collection="bulk_actions", counted="walked")
    job = submit_job(client(ctx), "/api/bulk_actions", body, wait=wait, wait_for=wait_for)
    if json_output:
        print_json(job)
    else:
        receipt = job.get("receipt")
        if receipt is None:
            stdout().print(f"{job['id']} {job['status']}: distillery completions bulk-status {job['id']}")
        else:
            verb = "would change" if job.get("dry_run") else "changed"
            skipped = ", ".join(f"{n} {reason}" for reason, n in receipt["skipped"].items()) or "none"
            stdout().print(
                f"{job['id']}: {receipt['matched_count']} matched, {verb} {receipt['updated_count']}, "
                f"{receipt['unchanged_count']} already so; skipped: {skipped}"
            )
    if job["status"] == "failed":
        raise problems(f"bulk action {job['id']} failed: {(job.get('error') or {}).get('message')}")


@app.command("bulk-status")
def bulk_status(
    ctx: typer.Context, bulk_action_id: Annotated[str, typer.Argument(metavar="ID")], json_output: Json = False
) -> None:
    """Show a bulk action's progress and receipt."""
    job = client(ctx).get(f"/api/bulk_actions/{bulk_action_id}")
    if json_output:
        print_json(job)
        return
    facts = fact_grid()
    for name in ("id", "status", "dry_run"):
        facts.add_row(name, str(job.get(name)))
    for name, value in (job.get("progress") or {}).items():
        facts.add_row(name, str(value))
    stdout().print(facts)


@app.command("relabel")
def relabel(
    ctx: typer.Context,
    deployment: Annotated[str, typer.Option("--deployment", help="The stronger deployment that answers again.")],
    max_total_tokens: Annotated[int, typer.Option(min=1, help="Stop once the calls used this many tokens.")],
    model: Model = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    every: Annotated[bool, typer.Option("--all", help="Every stored completion (no filter).")] = False,
    batch: Annotated[
        bool, typer.Option("--batch", help="Through the upstream's Batch API (half price on Azure global batch).")
    ] = False,
    wait: Wait = False,
    json_output: Json = False,
) -> None:
    """Answer the matching completions' requests again on a stronger deployment, kept as linked completions."""
    selection = completion_filter(model, metadata, created_after, created_before)
    body: dict[str, Any] = {"filter": selection} if selection else {"all": every}
    body |= {"deployment": deployment, "max_total_tokens": max_total_tokens, "mode": "batch" if batch else "direct"}
    wait_for = partial(_wait_for_filter_job, collection="relabels", counted="relabeled")
    job = submit_job(client(ctx), "/api/relabels", body, wait=wait, wait_for=wait_for)
    if json_output:
        print_json(job)
    elif job.get("receipt") is None:
        stdout().print(f"{job['id']} {job['status']}")
    else:
        receipt = job["receipt"]
        stdout().print(
            f"{job['id']}: {receipt['relabeled_count']} relabeled on {job['deployment']}, "
            f"{receipt['tokens_used']} tokens ({receipt['stopped']})"
        )
    if job["status"] == "failed":
        raise problems(f"relabel {job['id']} failed: {(job.get('error') or {}).get('message')}")
