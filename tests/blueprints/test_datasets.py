"""The datasets blueprint's function set: routes, methods, rights, and the queue trigger's bindings."""

from __future__ import annotations

import azure.functions as func

from blueprints import datasets
from shared.platform.access import Right


def test_routes_rights_and_queue_trigger() -> None:
    app = func.FunctionApp()
    app.register_functions(datasets.bp)
    functions = {function.get_function_name(): function for function in app.get_functions()}
    http = {
        name: (
            f.get_trigger().route,
            [str(getattr(m, "value", m)) for m in f.get_trigger().methods],
            f.get_user_function().required_right,
        )
        for name, f in functions.items()
        if f.get_trigger().get_binding_name() == "httpTrigger"
    }
    assert http == {
        "create_dataset": ("api/datasets", ["POST"], Right.ACTION),
        "list_datasets": ("api/datasets", ["GET"], Right.READ),
        "retrieve_dataset": ("api/datasets/{dataset_id}", ["GET"], Right.READ),
        "delete_dataset": ("api/datasets/{dataset_id}", ["DELETE"], Right.ACTION),
        "download_dataset_file": ("api/datasets/{dataset_id}/files/{name}", ["GET"], Right.READ),
    }
    trigger = functions["run_dataset_job"].get_trigger()
    assert (trigger.get_binding_name(), trigger.queue_name, trigger.connection) == (
        "serviceBusTrigger",
        "%DATASET_JOBS_QUEUE%",
        "ServiceBusConnection",
    )
