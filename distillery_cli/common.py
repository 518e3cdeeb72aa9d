"""What every command shares: the connection from the root options, option types, output and waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from distillery_cli.client import Connection, DistilleryClient

# The exit codes of every command (README "Exit codes" shows this table; tests/cli/test_main.py checks it).
EXIT_OK = 0
EXIT_API_ERROR = 1
"""The service failed (5xx, 429, a first report still pending, an answer that is not JSON or not plausible),
could not be reached, or a local file could not be read or written; a job is not finished or a delete was
declined: the same command may succeed later."""
EXIT_USAGE = 2
"""The command must change: a bad option or argument (click's own usage errors give 2 too), or the service
rejected the request (every other 4xx: invalid body, unknown id, wrong key, no right to it)."""
EXIT_PROBLEMS = 3
"""The command ran and found problems: check-file found bad lines, a waited-for job failed or was cancelled,
or health found a failed probe. With --json the result is on stdout as usual."""


class CommandFailed(Exception):
    """A command that cannot go on: printed as `Error: message` on stderr, or with --json as an
    OpenAI-shaped error object on stdout (`error_document`), then exit `exit_code`."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_API_ERROR,
        type: str = "error",
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.type = type
        self.code = code
        self.status = status
        self.param = param


def error_document(failure: CommandFailed) -> dict[str, Any]:
    """What --json prints for a failure: the service's error shape, plus the HTTP status and the exit code."""
    return {
        "error": {
            "message": failure.message,
            "type": failure.type,
            "param": failure.param,
            "code": failure.code,
            "status": failure.status,
            "exit_code": failure.exit_code,
        }
    }


POLL_SECONDS = 0.5


def _json_wanted(ctx: typer.Context, value: bool) -> bool:
    """--json after the command, or before it (`distillery --json quota`)."""
    return value or bool(ctx.find_root().params.get("json_output"))


Json = Annotated[
    bool,
    typer.Option(
        "--json", callback=_json_wanted, help='Print JSON for scripts instead of tables (errors too: {"error": …}).'
    ),
]
Model = Annotated[str | None, typer.Option("--model", help="Deployment or reported model name.")]
Metadata = Annotated[
    list[str] | None,
    typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Metadata pair that must match (repeatable)."),
]
CreatedAfter = Annotated[
    str | None,
    typer.Option(help="Captured at or after: Unix seconds or ISO 8601 (2026-11-23, 2026-11-23T21:00:00Z; UTC)."),
]
CreatedBefore = Annotated[
    str | None, typer.Option(help="Captured before (exclusive); same formats as --created-after.")
]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job finishes, with a progress bar.")]


def client(ctx: typer.Context) -> DistilleryClient:
    """The client for the root options; closed when the command ends."""
    root = ctx.find_root()
    connection: Connection = root.obj
    made = DistilleryClient(connection)
    root.call_on_close(made.close)
    return made


# Stored content is anyone's text: an escape sequence in it would drive the reader's terminal (OSC 52
# writes the clipboard, CSI 2J clears the screen, OSC 8 hides a link). C0 and C1 controls but tab and
# newline, DEL, and the bidirectional overrides that reorder what is shown, are printed as escapes.
_CONTROLS = (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}
# json.dumps already writes C0 controls as \u00XX; DEL, C1 and bidi controls it leaves as they are.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), *_BIDI)}


def printable(text: str) -> str:
    """`text` with every character that could control the terminal written as a visible escape (`\\x1b`)."""
    return text.translate(_ESCAPES)


def _printable_cell(cell: Any) -> Any:
    if isinstance(cell, str):
        return printable(cell)
    if isinstance(cell, Text):
        return Text(printable(cell.plain), style=cell.style)
    return cell


class _Terminal(Console):
    """A console that prints strings only through `printable`. Markup is off: completions, metadata and
    error messages are the callers' text ("[offline-echo] …"), never rich markup; colour goes through `style=`."""

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*(_printable_cell(item) for item in objects), **options)


class _Table(Table):
    """A table whose cells go through `printable`."""

    def add_row(self, *renderables: Any, **options: Any) -> None:
        super().add_row(*(_printable_cell(cell) for cell in renderables), **options)


def stdout() -> Console:
    return _Terminal(highlight=False, soft_wrap=True, markup=False)


def stderr() -> Console:
    return _Terminal(stderr=True, highlight=False, soft_wrap=True, markup=False)


def table(*columns: str | Column) -> Table:
    """A compact table: header rule only, so ids and hashes keep their width."""
    return _Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False)


def fact_grid() -> Table:
    """A two-column grid of names and values."""
    grid = _Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    return grid


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False).translate(_JSON_ESCAPES))


def parse_pairs(pairs: list[str] | None, option: str = "--metadata") -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{pair}' is not KEY=VALUE.", param_hint=option)
        found[key] = value
    return found


def parse_time(value: str | None, option: str) -> int | None:
    """Unix seconds from seconds or an ISO 8601 date/time (no zone = UTC)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"'{value}' is neither Unix seconds nor an ISO 8601 date.", param_hint=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def completion_filter(
    model: str | None, metadata: list[str] | None, created_after: str | None, created_before: str | None
) -> dict[str, Any]:
    """The stored-completions selection as the API's filter object (datasets, evals) — only the set conditions."""
    selection: dict[str, Any] = {
        "metadata": parse_pairs(metadata) or None,
        "model": model,
        "created_after": parse_time(created_after, "--created-after"),
        "created_before": parse_time(created_before, "--created-before"),
    }
    return {name: value for name, value in selection.items() if value is not None}


def completion_query(selection: dict[str, Any]) -> list[tuple[str, Any]]:
    """The same selection as list query parameters (`metadata[key]=value`)."""
    query = [(f"metadata[{key}]", value) for key, value in selection.get("metadata", {}).items()]
    return query + [(name, value) for name, value in selection.items() if name != "metadata"]


def when(unix: int | float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def problems(message: str) -> typer.Exit:
    """Print why the command found problems and the exit that says so."""
    stderr().print(message, style="red")
    return typer.Exit(EXIT_PROBLEMS)


def first_report(api: DistilleryClient, path: str) -> Any:
    """A report, telling on stderr while the service builds its first one (up to two minutes): a spinner
    on a terminal, one plain line otherwise (a log or a pipe gets no spinner frames)."""
    console = stderr()
    message = f"The service is building its first report at {path}; this can take up to two minutes…"
    with ExitStack() as shown:

        def pending() -> None:
            if console.is_terminal:
                shown.enter_context(console.status(message))
            else:
                console.print(message)

        return api.report(path, on_pending=pending)


JobWait = Callable[[DistilleryClient, str], dict[str, Any]]
"""Poll a job by its id until it has finished; its last state."""


def submit_job(
    api: DistilleryClient, path: str, body: dict[str, Any], *, wait: bool, wait_for: JobWait
) -> dict[str, Any]:
    """POST a job; with --wait, say it is queued (on stderr) and return its state once `wait_for` sees it finish."""
    job = api.post(path, body)
    if not wait:
        return job
    stderr().print(f"queued {job['id']}")
    return wait_for(api, job["id"])


def wait_until(
    poll: Callable[[], dict[str, Any]],
    *,
    finished: Callable[[dict[str, Any]], bool],
    progress: Callable[[dict[str, Any]], tuple[str, int, int | None]],
) -> dict[str, Any]:
    """Poll a job until `finished`, showing (description, done, total) on stderr; the last state."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr()) as bar:
        task = bar.add_task("queued", total=None)
        while True:
            state = poll()
            description, done, total = progress(state)
            bar.update(task, description=printable(description), completed=done, total=total)
            if finished(state):
                if total is None:
                    bar.update(task, total=done)
                return state
            time.sleep(POLL_SECONDS)
