"""`{{item.x}}` / `{{sample.output_text}}` templates, as the OpenAI Evals API fills them.

A variable is a dotted path into the data-source item (`item.`) or the model's sample (`sample.`);
list positions are numbers (`item.input.0.content`). Strings are inserted as they are, anything else
as JSON; a path with nothing at its end renders as an empty string. Unknown variables are refused
when the eval is created or a run is started (`check_variables`), not discovered item by item.

The variable pattern never backtracks: `{{`, then characters other than braces, then `}}`, trimmed
afterwards, so finding variables is linear in the template's length (a lazy pattern padded with optional spaces on
both sides took cubic time on `{{` plus spaces). Templates are also capped at `MAX_TEMPLATE_CHARS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from shared.platform.errors import InvalidRequest

VARIABLE = re.compile(r"\{\{([^{}]*)\}\}")
MAX_TEMPLATE_CHARS = 65_536
"""Longest template (a grader's input or reference, a message's text); longer is a 400."""
_PATH = re.compile(r"(item|sample)(\.[A-Za-z0-9_\-]+)*")

SAMPLE_FIELDS = frozenset(
    {"output_text", "output_json", "output_tools", "choices", "output", "input", "model", "usage", "finish_reason"}
)
"""What `sample.` offers: the OpenAI sample object plus `output_text` / `output_json` / `output_tools`."""


def render(template: str, *, item: dict[str, Any], sample: dict[str, Any] | None) -> str:
    namespaces = {"item": item, "sample": sample or {}}

    def fill(match: re.Match[str]) -> str:
        root, *path = match.group(1).strip().split(".")
        value = _lookup(namespaces.get(root), path)
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return VARIABLE.sub(fill, template)


def render_messages(
    messages: list[dict[str, Any]], *, item: dict[str, Any], sample: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Eval message templates (`{role, content}` or `{type: message, role, content}`) as chat messages."""
    rendered = []
    for message in messages:
        text = content_text(message.get("content"))
        rendered.append({"role": message["role"], "content": render(text, item=item, sample=sample)})
    return rendered


def variables(text: str) -> list[str]:
    return [match.group(1).strip() for match in VARIABLE.finditer(text)]


def check_variables(
    texts: Iterable[str], *, item_schema: dict[str, Any] | None, sample_available: bool, param: str
) -> None:
    """Refuse (400) a variable outside `item.*` / `sample.*`, a `sample.*` where no sample exists, or an
    `item.<field>` the data source's item schema does not declare (when it declares its properties)."""
    declared = _declared_fields(item_schema)
    for text in texts:
        if len(text) > MAX_TEMPLATE_CHARS:
            raise InvalidRequest(
                f"A template has {len(text)} characters; the most is {MAX_TEMPLATE_CHARS}.",
                param=param,
                code="template_too_long",
            )
        for variable in variables(text):
            if not _PATH.fullmatch(variable):
                raise InvalidRequest(
                    f"Unknown template variable '{{{{{variable}}}}}': use '{{{{item.<field>}}}}' or "
                    "'{{sample.output_text}}'.",
                    param=param,
                    code="invalid_template",
                )
            root, *path = variable.split(".")
            if root == "sample":
                if not sample_available:
                    raise InvalidRequest(
                        f"'{{{{{variable}}}}}' refers to the model's sample, but this data source has none "
                        "(set include_sample_schema, or generate samples with a model).",
                        param=param,
                        code="invalid_template",
                    )
                if path and path[0] not in SAMPLE_FIELDS:
                    raise InvalidRequest(
                        f"Unknown template variable '{{{{{variable}}}}}': a sample offers "
                        f"{', '.join(sorted(SAMPLE_FIELDS))}.",
                        param=param,
                        code="invalid_template",
                    )
            elif declared is not None and (not path or path[0] not in declared):
                raise InvalidRequest(
                    f"Unknown template variable '{{{{{variable}}}}}': the item schema declares "
                    f"{', '.join(sorted(declared)) or 'no fields'}.",
                    param=param,
                    code="invalid_template",
                )


def _declared_fields(item_schema: dict[str, Any] | None) -> set[str] | None:
    """The item's top-level fields, or None when the schema leaves them open."""
    if not item_schema or item_schema.get("additionalProperties", False) not in (False, None):
        return None
    properties = item_schema.get("properties")
    return set(properties) if isinstance(properties, dict) else None


def _lookup(value: Any, path: list[str]) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdecimal() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def content_text(content: Any) -> str:
    """A message's text: the string itself, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(content_text(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or "")
    return ""
