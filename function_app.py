"""The Functions app: validates settings at start-up and registers one blueprint per trigger family."""

import logging

import azure.functions as func

from blueprints import (
    aliases,
    bulk_actions,
    chat_completions,
    completion_index,
    datasets,
    evals,
    fine_tuning,
    health,
    openapi,
    pane,
    purges,
    reports,
    responses,
    scores,
    stored_completions,
)
from shared.platform.runtime import freeze_start_up_objects
from shared.platform.settings import get_settings
from shared.platform.telemetry import configure_telemetry

logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
# Fail start-up with one message naming the bad setting, not on the first request; then pick the exporter.
configure_telemetry(get_settings())

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (
    chat_completions.bp,
    stored_completions.bp,
    scores.bp,
    bulk_actions.bp,
    completion_index.bp,
    datasets.bp,
    evals.bp,
    fine_tuning.bp,
    health.bp,
    reports.bp,
    purges.bp,
    openapi.bp,
    pane.bp,
    responses.bp,
    aliases.bp,
):
    app.register_functions(blueprint)

# Last: what the imports above built lives as long as the worker, out of full collections' way.
freeze_start_up_objects()
