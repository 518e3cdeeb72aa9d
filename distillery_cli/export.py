"""`distillery export`: a selection of stored completions to JSONL, page by page, resumable.

The file is its own checkpoint: each page is appended and flushed, so after a kill the last complete
line names the last completion written. A re-run drops a torn last line and lists on after that id,
so the file ends up holding each completion once, exactly as one uninterrupted export would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from distillery_cli.client import COMPLETIONS_PATH, PAGE_LIMIT
from distillery_cli.common import (
    EXIT_USAGE,
    CommandFailed,
    CreatedAfter,
    CreatedBefore,
    Json,
    Metadata,
    Model,
    client,
    completion_filter,
    completion_query,
    print_json,
    stderr,
)

_TAIL_BLOCK = 64 * 1024


def resume_point(path: Path) -> str | None:
    """The id of the last complete line of an earlier export (a torn last line is cut off first)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        end = size
        tail = b""
        # Read back from the end until the tail holds a whole last line (or the whole file).
        while True:
            start = max(0, end - _TAIL_BLOCK)
            file.seek(start)
            tail = file.read(end - start) + tail
            end = start
            body = tail if tail.endswith(b"\n") else tail[: tail.rfind(b"\n") + 1]
            if body.count(b"\n") >= 2 or start == 0:
                break
        if not tail.endswith(b"\n"):
            torn = len(tail) - (tail.rfind(b"\n") + 1)
            file.truncate(size - torn)
            tail = tail[: len(tail) - torn]
    lines = tail.splitlines()
    if not lines:
        return None
    try:
        last: Any = json.loads(lines[-1])
        completion_id = last["id"]
    except (ValueError, TypeError, KeyError):
        completion_id = None
    if not isinstance(completion_id, str):
        raise CommandFailed(
            f"{path} does not end with an exported completion; choose another --out or pass --restart.",
            exit_code=EXIT_USAGE,
            type="usage_error",
            param="--out",
        )
    return completion_id


def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file; an existing one is resumed.", dir_okay=False)],
    model: Model = None,
    metadata: Metadata = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    order: Annotated[str, typer.Option(help="asc (oldest first) or desc.", case_sensitive=False)] = "asc",
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many completions (this run).")] = None,
    page_size: Annotated[int, typer.Option(min=1, max=PAGE_LIMIT, help="Completions per request.")] = PAGE_LIMIT,
    restart: Annotated[bool, typer.Option("--restart", help="Overwrite FILE instead of resuming it.")] = False,
    json_output: Json = False,
) -> None:
    """Export stored completions matching every filter to JSONL (one chat.completion a line).

    Streamed page by page; re-running the same command continues after the last id in FILE.
    """
    if order.lower() not in ("asc", "desc"):
        raise typer.BadParameter("must be asc or desc", param_hint="--order")
    query = completion_query(completion_filter(model, metadata, created_after, created_before))
    query += [("kind", "all"), ("order", order.lower()), ("limit", page_size)]
    if restart:
        out.unlink(missing_ok=True)
    after = resume_point(out)
    written = 0
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} written"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr()) as progress, out.open("ab") as file:
        task = progress.add_task(f"exporting to {out}" + (f" (resuming after {after})" if after else ""), total=None)
        for page, _ in client(ctx).pages(COMPLETIONS_PATH, query, after=after):
            if limit is not None:
                page = page[: limit - written]
            file.write(b"".join(_line(completion) for completion in page))
            file.flush()
            written += len(page)
            progress.update(task, completed=written)
            if limit is not None and written >= limit:
                break
    summary = {"file": str(out), "written": written, "resumed_after": after}
    if json_output:
        print_json(summary)
    else:
        stderr().print(f"wrote {written} completion(s) to {out}" + (f", resuming after {after}" if after else ""))


def _line(completion: dict[str, Any]) -> bytes:
    return json.dumps(completion, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
