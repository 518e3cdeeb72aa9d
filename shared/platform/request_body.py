"""How a request body is read: one UTF-8 JSON object (or a multipart file upload), metadata pairs as
OpenAI validates them, and pydantic's complaints turned into OpenAI-shaped errors naming the parameter."""

from __future__ import annotations

import json
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from shared.platform.errors import InvalidRequest

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]
"""Up to 16 string pairs, keys up to 64 characters and values up to 512, as OpenAI validates them."""


def parse_json_object(raw: bytes, *, max_depth: int = 64) -> dict[str, Any]:
    """Decode a request body that must be a UTF-8 JSON object of valid Unicode, with OpenAI-shaped errors.

    Refused as invalid JSON: NaN and infinities (not JSON), integers too long for Python to parse,
    and lone surrogate escapes (not Unicode, so they could be neither stored nor echoed back).
    """
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)  # strict: no encoded surrogates
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if _depth(value) > max_depth:
        raise InvalidRequest(f"The JSON body is nested deeper than {max_depth} levels.", code="invalid_json")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise InvalidRequest("The JSON body contains an unpaired UTF-16 surrogate escape.", code="invalid_json")
    return value


_Model = TypeVar("_Model", bound=BaseModel)


def parse_model(model: type[_Model], body: Any) -> _Model:
    """A request body as `model`, or the OpenAI-shaped 400 naming the first field pydantic refused."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, with `param` naming the field as OpenAI does."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    if param == "metadata":
        message = _metadata_message(first, loc)
    elif first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {where}"
    elif first["type"] == "missing":
        message = f"Missing required parameter: '{where}'."
    else:
        message = f"Invalid value for '{where}': {first['msg']}."
    return InvalidRequest(message, param=param, code="invalid_value")


def _metadata_message(error: Any, loc: list[str]) -> str:
    if error["type"] == "too_long" and len(loc) == 1:
        return f"Invalid 'metadata': too many properties. Expected at most {MAX_METADATA_PAIRS} pairs."
    if len(loc) >= 2 and loc[-1] == "[key]":
        return f"Invalid 'metadata' key: keys must be 1 to {MAX_METADATA_KEY_CHARS} characters."
    if len(loc) == 2:
        return f"Invalid 'metadata.{loc[1]}': values must be strings of at most {MAX_METADATA_VALUE_CHARS} characters."
    return "Invalid 'metadata': expected an object of string keys and string values."


def _depth(value: Any) -> int:
    """Nesting depth, counted without recursion so a hostile body cannot exhaust the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)
    return deepest


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""Only a body with such an escape can decode to a lone surrogate; the full check runs only then."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class FormPart(NamedTuple):
    filename: str | None
    data: bytes


def parse_multipart_form(content_type: str | None, body: bytes) -> dict[str, FormPart]:
    """A `multipart/form-data` body (a file upload, as the SDKs send it) by field name, with the standard
    library's MIME parser; a 400 when it is not one."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data" or "boundary=" not in (content_type or ""):
        raise InvalidRequest("Send the file as multipart/form-data, as the OpenAI SDK's files.create does.")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + (content_type or "").encode("latin-1") + b"\r\n\r\n" + body
    )
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise InvalidRequest("The multipart body could not be read.")
    fields: dict[str, FormPart] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = FormPart(part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields
