"""`python -m distillery_cli`, the same as the `distillery` command."""

from distillery_cli.main import app

app(prog_name="distillery")
