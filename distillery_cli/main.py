"""The `distillery` command: a thin client of a Distillery deployment's HTTP API.

Exit codes: one table for every command, in `common` (EXIT_*) and the README.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.text import Text
from typer.core import TyperGroup

from distillery_cli import aliases, completions, datasets, evals, finetune
from distillery_cli.client import DEFAULT_URL, ApiError, Connection
from distillery_cli.common import (
    EXIT_API_ERROR,
    EXIT_USAGE,
    CommandFailed,
    Json,
    client,
    error_document,
    fact_grid,
    first_report,
    print_json,
    problems,
    stderr,
    stdout,
    table,
)
from distillery_cli.export import export

_json_errors: ContextVar[bool] = ContextVar("json_errors", default=False)
"""Whether this invocation asked for --json anywhere (before `--`): then failures are JSON too."""


def _failure(error: Any) -> CommandFailed:
    """Every way a command can fail, as one `CommandFailed` with its exit code from the table."""
    if isinstance(error, CommandFailed):
        return error
    if isinstance(error, ApiError):
        rejected = error.status is not None and 400 <= error.status < 500 and error.status != 429
        return CommandFailed(
            error.message,
            exit_code=EXIT_USAGE if rejected else EXIT_API_ERROR,
            type="invalid_request_error"
            if rejected
            else "connection_error"
            if error.code == "unreachable"
            else "api_error",
            code=error.code,
            status=error.status,
        )
    if isinstance(error, httpx.HTTPError):
        return CommandFailed(f"the request failed ({type(error).__name__}).", type="connection_error")
    if _is_click_error(error):
        param = error.param_hint if isinstance(error, typer.BadParameter) else None
        return CommandFailed(
            error.format_message(),
            exit_code=error.exit_code,
            type="usage_error" if error.exit_code == EXIT_USAGE else "error",
            param=param if isinstance(param, str) else None,
        )
    assert isinstance(error, OSError)
    return CommandFailed(f"{error.strerror or type(error).__name__}: {error.filename or ''}", type="file_error")


def _is_click_error(error: BaseException) -> Any:
    """click's own errors (a bad option, a missing argument): typer carries its own click, whose exceptions
    are TyperExceptions with an exit code and a message. Exit and Abort are TyperExceptions too, not errors."""
    return (
        isinstance(error, typer.TyperException)
        and not isinstance(error, typer.Exit | typer.Abort)
        and hasattr(error, "format_message")
    )


@contextmanager
def _failures_reported() -> Iterator[None]:
    """A failure becomes its message (or --json error object) and its exit code, never a traceback."""
    try:
        yield
    except typer.TyperException as error:
        if not _is_click_error(error) or not _json_errors.get():
            raise  # click prints the usage line and the hint, and exits 2
        failure = _failure(error)
        print_json(error_document(failure))
        raise typer.Exit(failure.exit_code) from None
    except (CommandFailed, ApiError, httpx.HTTPError, OSError) as error:
        failure = _failure(error)
        if _json_errors.get():
            print_json(error_document(failure))
        else:
            where = " ".join(str(part) for part in (failure.status, failure.code) if part)
            stderr().print(f"Error: {failure.message}" + (f" ({where})" if where else ""), style="red")
        raise typer.Exit(failure.exit_code) from None


class _Commands(TyperGroup):
    """Reports every failure (parsing the command line included) through `_failures_reported`."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        if parent is None:
            _json_errors.set("--json" in (args[: args.index("--")] if "--" in args else args))
        with _failures_reported():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _failures_reported():
            return super().invoke(ctx)


app = typer.Typer(
    name="distillery",
    cls=_Commands,
    help="Distillery from a terminal: stored completions, exports, datasets, eval runs, quota and health.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(completions.app, name="completions")
app.add_typer(datasets.app, name="datasets")
app.add_typer(evals.app, name="eval")
app.add_typer(finetune.app, name="finetune")
app.add_typer(aliases.app, name="alias")
app.command("export")(export)


def entra_token_provider(scope: str) -> Callable[[], str]:
    """Bearer tokens from DefaultAzureCredential (az login, azd, managed identity…), cached until near expiry."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    except ImportError:
        raise CommandFailed(
            "--entra needs azure-identity: pip install 'distillery[entra]'", exit_code=EXIT_USAGE
        ) from None
    provider = get_bearer_token_provider(DefaultAzureCredential(), scope)

    def token() -> str:
        try:
            return str(provider())
        except ClientAuthenticationError:
            # Its message lists every credential tried; the fix is the same whichever failed.
            raise ApiError(
                f"No Entra ID token for '{scope}': sign in (az login / azd auth login) or run where a managed "
                "identity is available, and check the scope names the app registration."
            ) from None

    return token


@app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="DISTILLERY_URL", help="The service's base URL.")] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="DISTILLERY_API_KEY", help="A service key (sent as api-key).", show_default=False),
    ] = None,
    entra: Annotated[
        bool,
        typer.Option("--entra", help="Authenticate with an Entra ID token (DefaultAzureCredential) instead of a key."),
    ] = False,
    entra_scope: Annotated[
        str | None,
        typer.Option(
            envvar="DISTILLERY_ENTRA_SCOPE", help="Token scope for --entra, e.g. api://<app-client-id>/.default."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for each HTTP answer.")] = 60.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON for scripts, errors too (the same as --json after the command).")
    ] = False,
) -> None:
    """Connect to a Distillery deployment (`make run` locally, or Azure) by URL and key or Entra token."""
    token = None
    if entra:
        if not entra_scope:
            raise typer.BadParameter(
                "--entra needs --entra-scope (or DISTILLERY_ENTRA_SCOPE)", param_hint="--entra-scope"
            )
        token = entra_token_provider(entra_scope)
    ctx.obj = Connection(url=url, api_key=None if entra else api_key, token=token, timeout=timeout)


@app.command("quota")
def quota(ctx: typer.Context, json_output: Json = False) -> None:
    """The storage quota report: used against the cap, breakdowns, the projected full date and, with
    PRICE_TABLE set, the cost per deployment and each student's break-even."""
    report = first_report(client(ctx), "/api/quota")
    if json_output:
        print_json(report)
        return
    facts = fact_grid()
    rows = {
        "generated (UTC)": report.get("generated_at"),
        "used": f"{report['used_bytes']:,} of {report['cap_bytes']:,} bytes ({report['percent_used']:.3f}%)",
        "level / mode": f"{report.get('level')} / {report.get('mode')}",
        "completions": f"{report.get('completion_count', 0):,} ({report.get('completion_bytes', 0):,} bytes)",
        "datasets": f"{report.get('dataset_count', 0):,} ({report.get('dataset_bytes', 0):,} bytes)",
        "trend": f"{report.get('trend_bytes_per_day', 0):,.0f} bytes/day over {report.get('trend_window_days')} days",
        "projected full": report.get("projected_full_date") or "-",
    }
    for name, value in rows.items():
        facts.add_row(name, str(value))
    console = stdout()
    console.print(facts)
    if report.get("by_model"):
        models = table("model", "completions", "bytes")
        for row in report["by_model"]:
            models.add_row(row["model"], f"{row['count']:,}", f"{row['bytes']:,}")
        console.print(models)
    cost = report.get("cost")
    if cost:
        spent = table("deployment", "calls", "input tokens", "output tokens", "cost")
        for row in cost["by_deployment"]:
            priced = f"{row['cost']:,.4f}" + (f" ({row['unpriced_calls']:,} unpriced)" if row["unpriced_calls"] else "")
            spent.add_row(
                row["name"], f"{row['calls']:,}", f"{row['input_tokens']:,}", f"{row['output_tokens']:,}", priced
            )
        console.print(spent)
        if cost.get("break_even"):
            even = table("alias", "student vs teacher", "calls/day", "break-even calls/day", "saves/day", "pays off")
            for row in cost["break_even"]:
                threshold = row["break_even_calls_per_day"]
                even.add_row(
                    row["alias"],
                    f"{row['student']} vs {row['teacher']}",
                    f"{row['calls_per_day']:,.1f}",
                    "never" if threshold is None else f"{threshold:,.1f}",
                    f"{row['savings_per_day']:,.2f}",
                    "yes" if row["pays_off"] else "no",
                )
            console.print(even)


@app.command("health")
def health(ctx: typer.Context, json_output: Json = False) -> None:
    """Readiness and the permission report: every probe of the app's identity, and who holds which right.

    Exits 3 when a probe failed.
    """
    api = client(ctx)
    ready = api.get("/api/health")
    report = first_report(api, "/api/health/permissions")
    if json_output:
        print_json({"status": ready.get("status"), "upstream": ready.get("upstream"), "permissions": report})
    else:
        console = stdout()
        verdict = "healthy" if report.get("healthy") else "unhealthy"
        console.print(
            f"service {ready.get('status')}, upstream {ready.get('upstream')}; permissions {verdict} (report {report.get('generated_at')})"
        )
        probes = table("probe", "status", "ms", "detail")
        for probe in report.get("probes", []):
            style = {"ok": "green", "failed": "red"}.get(probe["status"], "yellow")
            detail = " ".join(part for part in (probe.get("error_code"), probe.get("error"), probe.get("fix")) if part)
            probes.add_row(
                probe["name"], Text(probe["status"], style=style), f"{probe.get('elapsed_ms', 0):.0f}", detail
            )
        console.print(probes)
        callers = table("identity", "kind", "rights")
        for identity in report.get("identities", []):
            callers.add_row(identity["name"], identity["kind"], ", ".join(identity["rights"]))
        console.print(callers)
    if not report.get("healthy"):
        failed = [probe["name"] for probe in report.get("probes", []) if probe["status"] == "failed"]
        raise problems(f"failed probes: {', '.join(failed)}")


@app.command("check-file")
def check_file(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, help="A chat fine-tuning JSONL file.")
    ],
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Per-example token limit (default 65536).")] = None,
    json_output: Json = False,
) -> None:
    """Check a fine-tuning JSONL file against OpenAI's chat format rules, offline. Exits 3 on bad lines."""
    from shared.datasets.check import DEFAULT_MAX_TOKENS
    from shared.datasets.check import check_file as check

    found = list(check(file, max_tokens=max_tokens or DEFAULT_MAX_TOKENS))
    bad_lines = len({problem.line for problem in found})
    if json_output:
        listed = [{"line": p.line, "rule": p.problem.rule, "message": p.problem.message} for p in found]
        print_json({"file": str(file), "ok": not found, "bad_lines": bad_lines, "problems": listed})
    else:
        console = stdout()
        for problem in found:
            console.print(f"{file}:{problem.line}: {problem.problem.rule}: {problem.problem.message}")
        if not found:
            console.print(f"ok: every line of {file} is a valid fine-tuning example")
    if found:
        raise problems(f"{bad_lines} bad line(s)")
