"""The Azure Functions Python worker indexes `function_app.py` as Azure would start it.

The worker runs in a subprocess whose environment is exactly the app settings `infra/` deploys
(evaluated with `main.bicep`'s parameter defaults), so a binding the worker refuses, a `%SETTING%`
the deployment does not supply, a schedule the host cannot parse or a setting value the app's own
start-up validation rejects fails here instead of on the first deployment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter
from pycep import BicepParser

from tests.infra.test_bicep import APP_MODULE, INFRA

ROOT = INFRA.parent
COMPUTED = object()
"""A value Azure computes at deployment (a resource's name, an identity's client id)."""

# Azure-shaped values for the computed settings; a new computed setting must be added here.
DEPLOYED_STAND_INS = {
    "AzureWebJobsStorage__accountName": "stdistillery0000",
    "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
    "ServiceBusConnection__fullyQualifiedNamespace": "sb-distillery0000.servicebus.windows.net",
    "ServiceBusConnection__clientId": "00000000-0000-0000-0000-000000000001",
    "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000002",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=00000000-0000-0000-0000-000000000001;Authorization=AAD",
    "AZURE_RESOURCE_MANAGER_ENDPOINT": "https://management.azure.com/",  # environment().resourceManager
}
_SETTING_REFERENCE = re.compile(r"%([A-Za-z0-9_]+)%")


class _Scope:
    """One Bicep file's names; a module's parameters are read from its caller's arguments."""

    def __init__(self, parsed: dict[str, Any], *, args: dict[str, Any] | None = None, caller: _Scope | None = None):
        self.parameters = parsed["parameters"]
        self.variables = parsed["variables"]
        self.symbols = parsed.get("resources", {}).keys() | parsed.get("modules", {}).keys()
        self.args = args or {}
        self.caller = caller

    def evaluate(self, expression: Any) -> Any:
        if isinstance(expression, bool | int):
            return expression
        if isinstance(expression, str):
            return self._name(expression)
        if "operator" in expression:
            return self._operator(expression["operator"])
        if "function" in expression:
            return self._function(expression["function"])
        return {key.strip("'"): self.evaluate(value) for key, value in expression.items()}

    def _name(self, name: str) -> Any:
        if name in self.variables:
            return self.evaluate(self.variables[name]["value"])
        if name in self.parameters:
            if name in self.args and self.caller is not None:
                return self.caller.evaluate(self.args[name])
            default = self.parameters[name].get("default", COMPUTED)
            return default if default is COMPUTED else self.evaluate(default)
        if name in self.symbols:
            return COMPUTED
        return name  # pycep unquotes string literals

    def _operator(self, operator: dict[str, Any]) -> Any:
        operands = operator["operands"]
        if operator["type"] == "conditional":
            condition = self.evaluate(operands["condition"])
            if condition is COMPUTED:
                return COMPUTED
            return self.evaluate(operands["true_value"] if condition else operands["false_value"])
        if operator["type"] == "property_accessor":
            owner = self.evaluate(operands["operand_1"])
            member = operands["operand_2"]
            return owner[member] if isinstance(owner, dict) and isinstance(member, str) else COMPUTED
        return COMPUTED

    def _function(self, function: dict[str, Any]) -> Any:
        arguments = [self.evaluate(argument) for argument in (function.get("parameters") or {}).values()]
        if any(argument is COMPUTED for argument in arguments):
            return COMPUTED
        if function["type"] == "union":
            return {key: value for argument in arguments for key, value in argument.items()}
        if function["type"] == "empty":
            return not arguments[0]
        if function["type"] == "string":
            return _app_setting_text(arguments[0])
        return COMPUTED


def _app_setting_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


@pytest.fixture(scope="module")
def deployed_settings() -> dict[str, str]:
    """The `appsettings` the Bicep deploys with its parameter defaults, computed values stood in for."""
    parser = BicepParser()
    main = parser.parse(file_path=INFRA / "main.bicep")
    api = parser.parse(file_path=APP_MODULE)
    scope = _Scope(api, args=main["modules"]["api"]["config"]["params"], caller=_Scope(main))
    (config,) = (
        resource["config"]
        for resource in api["resources"].values()
        if resource["type"] == "Microsoft.Web/sites/config" and resource["config"].get("name") == "appsettings"
    )
    settings = {}
    for name, value in scope.evaluate(config["properties"]).items():
        if value is COMPUTED:
            assert name in DEPLOYED_STAND_INS, f"{name} is computed at deployment: add a value to DEPLOYED_STAND_INS"
            value = DEPLOYED_STAND_INS[name]
        settings[name] = _app_setting_text(value)
    return settings


def run_worker(app_dir: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT), **settings}
    return subprocess.run(
        [sys.executable, "-m", "tests.infra.worker_index", str(app_dir)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def worker_index(deployed_settings: dict[str, str]) -> dict[str, Any]:
    completed = run_worker(ROOT, deployed_settings)
    assert "No module named 'azure_functions_runtime'" not in completed.stderr, (
        "run `make setup`: it installs the worker"
    )
    assert completed.returncode == 0, f"the worker refused the app:\n{completed.stderr[-4000:]}"
    return dict(json.loads(completed.stdout))


def test_the_worker_indexes_every_registered_function(worker_index: dict[str, Any], functions: dict[str, Any]) -> None:
    assert {function["name"] for function in worker_index["functions"]} == functions.keys()


def test_the_worker_serves_http_through_the_streams_extension(worker_index: dict[str, Any]) -> None:
    """Without it, the FastAPI request/response types (and live server-sent events) do not work."""
    assert worker_index["http_v2"] is True


def test_binding_expressions_resolve_to_deployed_values(
    worker_index: dict[str, Any], deployed_settings: dict[str, str]
) -> None:
    for function in worker_index["functions"]:
        for binding in function["bindings"]:
            for value in (value for value in binding.values() if isinstance(value, str)):
                for name in _SETTING_REFERENCE.findall(value):
                    assert deployed_settings.get(name), f"{function['name']}: %{name}% has no deployed value"
            if "connection" in binding:
                assert deployed_settings.get(f"{binding['connection']}__fullyQualifiedNamespace"), function["name"]
            if binding["type"] == "timerTrigger":
                schedule = _SETTING_REFERENCE.sub(lambda match: deployed_settings[match.group(1)], binding["schedule"])
                assert croniter.is_valid(schedule, second_at_beginning=True), f"{function['name']}: {schedule!r}"
                assert len(schedule.split()) == 6, f"{function['name']}: NCRONTAB needs a seconds field: {schedule!r}"
                assert not binding.get("runOnStartup"), f"{function['name']}: run_on_startup stays off in production"


def test_the_worker_refuses_a_binding_the_host_would_refuse(tmp_path: Path) -> None:
    """The harness itself: an app the worker cannot load fails with the worker's error."""
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\n"
        "app = func.FunctionApp()\n"
        "@app.route(route='broken')\n"
        "def broken(req: func.HttpRequest, unbound: int) -> func.HttpResponse:\n"
        "    return func.HttpResponse('')\n"
    )
    completed = run_worker(tmp_path, {})
    assert completed.returncode != 0
    assert "unbound" in completed.stderr and "FunctionLoadError" in completed.stderr
