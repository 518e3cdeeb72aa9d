"""The Bicep in `infra/` parses, and its app settings match the settings the code reads, both ways.

No Azure is reached: pycep parses the files, and the app's own settings model and registered
bindings say what the code reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from pycep import BicepParser

from shared.platform.settings import Settings

INFRA = Path(__file__).resolve().parents[2] / "infra"
APP_MODULE = INFRA / "app" / "api.bicep"

# Read by the code, deliberately absent from the Bicep app settings.
CODE_ONLY = {
    # Local-only: a connection string for Azurite; in Azure the host and the app use
    # AzureWebJobsStorage__accountName with the managed identity.
    "AzureWebJobsStorage": "local connection string",
    # Secrets are kept out by design: the deployment is keyless (Entra ID everywhere). A user who
    # must use a key stores it in Key Vault and sets the app setting to a reference,
    # @Microsoft.KeyVault(SecretUri=...), granting the identity Key Vault Secrets User.
    "AZURE_OPENAI_API_KEY": "secret: Key Vault reference only",
    "OPENAI_API_KEY": "secret: Key Vault reference only",
    "DISTILLERY_API_KEY": "secret: Key Vault reference only",
}

# In the Bicep app settings, deliberately not read by the app code.
BICEP_ONLY = {
    # Host-level: the Functions host and its extensions read these, never the Python code.
    "AzureWebJobsStorage__credential": "host: identity-based storage connection",
    "AzureWebJobsStorage__clientId": "host: identity-based storage connection",
    "ServiceBusConnection__credential": "Service Bus extension: identity-based trigger connection",
    "ServiceBusConnection__clientId": "Service Bus extension: identity-based trigger connection",
    "PYTHON_ENABLE_INIT_INDEXING": "worker: the HTTP streams extension needs init indexing",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "host: telemetry with Entra ID (the app passes its credential)",
}

_SETTING_REFERENCE = re.compile(r"%([A-Za-z0-9_]+)%")


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="module")
def parser() -> BicepParser:
    return BicepParser()


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: str(path.relative_to(INFRA)))
def test_bicep_file_parses(parser: BicepParser, path: Path) -> None:
    parsed = parser.parse(file_path=path)
    assert parsed["resources"] or parsed["modules"], f"{path} declares nothing"


def test_main_targets_the_subscription_and_composes_modules(parser: BicepParser) -> None:
    main = parser.parse(file_path=INFRA / "main.bicep")
    assert main["globals"]["scope"]["value"] == "subscription"
    sources = {module["detail"]["path"] for module in main["modules"].values()}
    assert {str(path.relative_to(INFRA)) for path in (INFRA / "app").glob("*.bicep")} == sources


def bicep_app_settings(parsed: dict[str, Any]) -> set[str]:
    """Every key the `appsettings` config resource can set, through variables, union() and ?:."""
    variables = {name: variable["value"] for name, variable in parsed["variables"].items()}
    resources = [
        body
        for resource in parsed["resources"].values()
        if resource["type"] == "Microsoft.Web/sites/config" and (body := _body(resource))["name"] == "appsettings"
    ]
    assert len(resources) == 1, "expected exactly one appsettings resource"
    return set(_object_keys(resources[0]["properties"], variables))


def _body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's properties; pycep nests a conditional resource's one level down."""
    config = resource["config"]
    return config["config"] if "condition" in config else config


def _object_keys(expression: Any, variables: dict[str, Any]) -> Iterator[str]:
    if isinstance(expression, str):
        assert expression in variables, f"app settings built from {expression!r}, which is not a variable"
        yield from _object_keys(variables[expression], variables)
    elif "function" in expression and expression["function"]["type"] == "union":
        for argument in expression["function"]["parameters"].values():
            yield from _object_keys(argument, variables)
    elif "operator" in expression and expression["operator"]["type"] == "conditional":
        operands = expression["operator"]["operands"]
        yield from _object_keys(operands["true_value"], variables)
        yield from _object_keys(operands["false_value"], variables)
    else:
        assert not {"function", "operator"} & expression.keys(), f"cannot read app settings from {expression}"
        yield from (key.strip("'") for key in expression)


def settings_read_by_bindings(functions: list[Any]) -> set[str]:
    """`%NAME%` references and `connection=` names in every registered binding."""
    names: set[str] = set()
    for function in functions:
        for binding in function.get_bindings():
            for field, value in binding.get_dict_repr().items():
                if not isinstance(value, str):
                    continue
                if field == "connection":
                    names.add(value)
                names.update(_SETTING_REFERENCE.findall(value))
    return names


def covers(bicep: set[str], name: str) -> bool:
    """An identity-based connection `NAME` is configured by `NAME__property` settings."""
    return name in bicep or any(key.startswith(f"{name}__") for key in bicep)


@pytest.fixture(scope="module")
def code_settings(registered_functions: list[Any]) -> set[str]:
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert None not in aliases, "every settings field needs an alias (its app-setting name)"
    return aliases | settings_read_by_bindings(registered_functions)


@pytest.fixture(scope="module")
def bicep_settings(parser: BicepParser) -> set[str]:
    return bicep_app_settings(parser.parse(file_path=APP_MODULE))


def test_every_setting_the_code_reads_is_deployed(code_settings: set[str], bicep_settings: set[str]) -> None:
    missing = {name for name in code_settings if not covers(bicep_settings, name)} - CODE_ONLY.keys()
    assert not missing, f"add to infra/app/api.bicep appSettings (or to CODE_ONLY with a reason): {sorted(missing)}"


def test_every_deployed_setting_is_read_by_the_code(code_settings: set[str], bicep_settings: set[str]) -> None:
    unread = bicep_settings - code_settings - BICEP_ONLY.keys()
    assert not unread, f"the code reads none of these app settings: {sorted(unread)}"


def test_allow_lists_are_not_stale(code_settings: set[str], bicep_settings: set[str]) -> None:
    assert not (BICEP_ONLY.keys() & code_settings), "the code now reads these: drop them from BICEP_ONLY"
    assert not (BICEP_ONLY.keys() - bicep_settings), "no longer in the Bicep: drop them from BICEP_ONLY"
    assert not (CODE_ONLY.keys() - code_settings), "the code no longer reads these: drop them from CODE_ONLY"
    assert not (CODE_ONLY.keys() & bicep_settings), "secrets and local-only settings must stay out of the Bicep"


def test_binding_settings_are_collected() -> None:
    """The drift check sees queue, schedule and connection settings, not only HTTP routes."""
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(arg_name="msg", queue_name="%SOME_QUEUE%", connection="SomeConnection")
    async def on_job(msg: func.ServiceBusMessage) -> None: ...

    @app.timer_trigger(arg_name="timer", schedule="%SOME_SCHEDULE%", run_on_startup=False)
    async def on_timer(timer: func.TimerRequest) -> None: ...

    assert settings_read_by_bindings(app.get_functions()) == {"SOME_QUEUE", "SomeConnection", "SOME_SCHEDULE"}
    assert covers({"SomeConnection__fullyQualifiedNamespace"}, "SomeConnection")
    assert not covers({"SomeConnectionString"}, "SomeConnection")


def test_bicep_app_settings_follow_variables_unions_and_conditions(parser: BicepParser) -> None:
    parsed = parser.parse(
        text="param url string = ''\n"
        "var base = { A: 'a', 'B__x': 'b' }\n"
        "resource s 'Microsoft.Web/sites/config@2024-04-01' = {\n"
        "  name: 'appsettings'\n"
        "  properties: union(base, empty(url) ? {} : { C: url })\n"
        "}\n"
    )
    assert bicep_app_settings(parsed) == {"A", "B__x", "C"}


def test_keyless_by_construction(parser: BicepParser) -> None:
    """Shared keys and local auth are off wherever the service offers them."""
    text = {path.name: path.read_text() for path in bicep_files()}
    assert "allowSharedKeyAccess: false" in text["storage.bicep"]
    assert "allowBlobPublicAccess: false" in text["storage.bicep"]
    assert "disableLocalAuth: true" in text["servicebus.bicep"]
    assert "DisableLocalAuth: true" in text["monitoring.bicep"]
    assert not any(re.search(r"listKeys\(|AccountKey=|SharedAccessKey", body) for body in text.values())


def test_no_setting_flex_consumption_refuses() -> None:
    """Regions that enforce Flex Consumption's rules refuse `siteConfig.ftpsState` (ARM error 51021)."""
    api = APP_MODULE.read_text()
    assert not re.search(r"^\s*ftpsState\s*:", api, re.MULTILINE)
    assert "name: 'ftp'" not in api, "Flex Consumption has no FTP publishing credentials policy"


def test_one_retention_mechanism_the_sweep() -> None:
    """A lifecycle rule deleting current completion blobs would leave their index rows (metadata, owner) behind."""
    storage = (INFRA / "app" / "storage.bicep").read_text()
    assert "baseBlob" not in storage, "retention is retention_sweep's job, not a lifecycle rule's"
    assert "daysAfterCreationGreaterThan: recoveryDays" in storage  # previous versions still expire


def test_every_job_queue_grants_what_target_based_scaling_needs(parser: BicepParser) -> None:
    """The scale controller reads queue length with the app's identity: Azure Service Bus Data Owner on each queue."""
    main = parser.parse(file_path=INFRA / "main.bicep")
    roles_args = main["modules"]["roles"]["config"]["params"]
    queue_names = roles_args["serviceBusQueueNames"]["operator"]["operands"]
    assert queue_names["operand_1"] == "serviceBus", "the roles module must grant on the queues Service Bus creates"
    roles = parser.parse(file_path=INFRA / "app" / "roles.bicep")
    assert "090c5cfd-751d-490a-894a-3ce6f1109419" in str(roles["variables"]["serviceBusQueueRoles"])  # Data Owner
    grants = roles["resources"]["serviceBusQueueGrants"]["config"]
    assert "jobQueues" in str(grants["config"]["scope"] if "config" in grants else grants["scope"])
