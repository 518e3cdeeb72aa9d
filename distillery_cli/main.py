"""The `distillery` command: a thin client of a Distillery deployment's HTTP API.

Exit codes: 0 ok; 1 the API answered an error (its message is printed) or could not be reached;
2 usage error; 3 check-file found problems, a waited-for job failed, or health found a failed probe.
"""

from __future__ import annotations

from collections.abc import Callable
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
    Json,
    client,
    fact_grid,
    print_json,
    problems,
    stderr,
    stdout,
    table,
)
from distillery_cli.export import export


class _Commands(TyperGroup):
    """Turns an API error into its message and exit 1, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as error:
            stderr().print(f"Error: {error.describe()}", style="red")
            raise typer.Exit(EXIT_API_ERROR) from None
        except httpx.HTTPError as error:
            stderr().print(f"Error: the request failed ({type(error).__name__}).", style="red")
            raise typer.Exit(EXIT_API_ERROR) from None
        except OSError as error:
            stderr().print(f"Error: {error.strerror or type(error).__name__}: {error.filename or ''}", style="red")
            raise typer.Exit(EXIT_API_ERROR) from None


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
        stderr().print("--entra needs azure-identity: pip install 'distillery[entra]'", style="red")
        raise typer.Exit(EXIT_USAGE) from None
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
    """The storage quota report: used against the cap, breakdowns and the projected full date."""
    report = client(ctx).report("/api/quota")
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


@app.command("health")
def health(ctx: typer.Context, json_output: Json = False) -> None:
    """Readiness and the permission report: every probe of the app's identity, and who holds which right.

    Exits 3 when a probe failed.
    """
    api = client(ctx)
    ready = api.get("/api/health")
    report = api.report("/api/health/permissions")
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
