"""The Bicep in `infra/` parses, and its app settings match the settings the code reads, both ways.

No Azure is reached: pycep parses the files, and the app's own settings model and registered
bindings say what the code reads.
"""

from __future__ import annotations

import json
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


SERVICE_BUS_DATA_OWNER = "090c5cfd-751d-490a-894a-3ce6f1109419"
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
OPENAI_CONTRIBUTOR = "a001fd3d-188f-4b5d-821b-7da978bf7442"
OPENAI_USER = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd"


def _config(entry: dict[str, Any]) -> dict[str, Any]:
    """A module's or resource's body; pycep nests a conditional one a level down."""
    config = entry["config"]
    return config["config"] if "condition" in config else config


def test_job_queues_grant_sender_and_receiver_and_data_owner_only_for_scaling(parser: BicepParser) -> None:
    """Everyone sends and receives; only the app, whose triggers the scale controller sizes, gets Data Owner."""
    roles = parser.parse(file_path=INFRA / "app" / "roles.bicep")
    assert roles["variables"]["serviceBusQueueRoles"]["value"] == [SERVICE_BUS_DATA_SENDER, SERVICE_BUS_DATA_RECEIVER]
    assert roles["variables"]["serviceBusScalingRoles"]["value"] == [SERVICE_BUS_DATA_OWNER]
    text = (INFRA / "app" / "roles.bicep").read_text()
    assert text.count(SERVICE_BUS_DATA_OWNER) == 1, "Data Owner is granted in one place only"
    assert "functions-target-based-scaling" in text and "Manage Claim" in text, "cite why scaling needs Data Owner"
    for grants in ("serviceBusQueueGrants", "serviceBusScalingGrants"):
        assert "jobQueues" in str(_config(roles["resources"][grants])["scope"]), (
            f"{grants}: on each queue, not the namespace"
        )
    assert "queueScalingPrincipals" in str(roles["resources"]["serviceBusScalingGrants"])

    main = parser.parse(file_path=INFRA / "main.bicep")
    params = _config(main["modules"]["roles"])["params"]
    assert params["queueScalingPrincipals"] == "appPrincipals"  # never the deploying developer
    assert params["serviceBusQueueNames"]["operator"]["operands"]["operand_1"] == "serviceBus"


def test_openai_contributor_only_when_fine_tuning_is_enabled(parser: BicepParser) -> None:
    roles = parser.parse(file_path=INFRA / "app" / "roles.bicep")
    [choice] = roles["variables"]["openAiRoles"]["value"]
    assert choice["operator"]["operands"] == {
        "condition": "openAiFineTuning",
        "true_value": OPENAI_CONTRIBUTOR,
        "false_value": OPENAI_USER,
    }
    assert roles["parameters"]["openAiFineTuning"]["default"] is False
    main = parser.parse(file_path=INFRA / "main.bicep")
    assert main["parameters"]["enableFineTuning"]["default"] is False
    assert _config(main["modules"]["openAiRoles"])["params"]["openAiFineTuning"] == "enableFineTuning"
    assert "${DISTILLERY_ENABLE_FINE_TUNING=false}" in (INFRA / "main.parameters.json").read_text()


def test_app_service_authentication_leaves_pages_without_data_open_and_requires_https(parser: BicepParser) -> None:
    auth = parser.parse(file_path=INFRA / "app" / "auth.bicep")["resources"]["auth"]["config"]
    assert auth["name"] == "authsettingsV2"
    properties = auth["properties"]
    assert properties["globalValidation"]["excludedPaths"] == ["/", "/pane/*", "/api/health"]
    assert properties["globalValidation"]["unauthenticatedClientAction"] == "Return401"
    assert properties["httpSettings"] == {"requireHttps": True}
    main = parser.parse(file_path=INFRA / "main.bicep")
    assert main["modules"]["auth"]["config"]["condition"] == "enableEntraAuth"


def test_no_conditional_site_config_for_checkov_to_crash_on(parser: BicepParser) -> None:
    """checkov's CKV_AZURE_70 raises on a conditional Microsoft.Web/sites/config (no top-level `properties`),
    whatever skip comment it carries; `make infra-check` fails on any checkov traceback."""
    for path in bicep_files():
        for name, resource in parser.parse(file_path=path)["resources"].items():
            if resource["type"] == "Microsoft.Web/sites/config":
                assert "condition" not in resource["config"], f"{path.name}: {name} is conditional; make its module so"
    makefile = (INFRA.parent / "Makefile").read_text()
    assert "> .make/checkov.txt 2>&1" in makefile and 'grep -q "Traceback" .make/checkov.txt' in makefile


def test_host_and_worker_telemetry_correlate() -> None:
    """OpenTelemetry mode: the host's spans and the Python worker's share one trace."""
    host = json.loads((INFRA.parent / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"


def test_redaction_s_language_account_is_keyless_optional_and_granted_cognitive_services_user(
    parser: BicepParser,
) -> None:
    main = parser.parse(file_path=INFRA / "main.bicep")
    assert main["parameters"]["createLanguageResource"]["default"] is False
    assert main["parameters"]["redaction"]["default"] == "off"
    language = parser.parse(file_path=INFRA / "app" / "language.bicep")["resources"]["language"]["config"]
    assert language["kind"] == "TextAnalytics"
    assert language["properties"]["disableLocalAuth"] is True
    assert language["properties"]["customSubDomainName"] == "name"  # Entra ID sign-in needs one
    roles = (INFRA / "app" / "roles.bicep").read_text()
    assert "'a97b65f3-24c7-4388-baec-2e87135dc908' // Cognitive Services User" in roles
    api = APP_MODULE.read_text()
    # The pseudonymize key is never a value in the deployment: only a Key Vault reference to it.
    assert "REDACTION_KEY: '@Microsoft.KeyVault(SecretUri=${redactionKeySecretUri})'" in api
