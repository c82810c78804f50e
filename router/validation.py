"""Turn a request body into a validated protocol model, or an :class:`InvalidRequestError`.

The handlers parse the body here instead of through FastAPI's body parameters, for two reasons.
The raw JSON object is what an upstream receives, with unknown fields untouched. And a body is
read as JSON whatever its ``Content-Type``, so ``curl -d '{...}'`` works without ``-H``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from router.errors import InvalidRequestError

Model = TypeVar("Model", bound=BaseModel)


async def read_json_object(request: Request) -> dict[str, Any]:
    """Read the request body as a JSON object.

    Raises
    ------
    InvalidRequestError
        If the body is empty, not UTF-8 JSON, or not a JSON object.
    """
    body = await request.body()
    if not body.strip():
        raise InvalidRequestError("The request body is empty: send a JSON object.", code="invalid_json")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequestError(
            f"The request body is not valid JSON ({error}): send a JSON object.", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, got {type(value).__name__}.", code="invalid_json"
        )
    return value


def validate_body(model: type[Model], body: dict[str, Any]) -> Model:
    """Validate ``body`` into ``model``, raising the first problem as an :class:`InvalidRequestError`."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise describe_validation_error(error.errors()) from None


def describe_validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    """Describe the first of pydantic's (or FastAPI's) validation errors as an OpenAI error.

    ``param`` is the JSON path of the offending field, written as OpenAI writes it
    (``messages[0].role``); FastAPI's leading ``body`` location is dropped.
    """
    first = errors[0]
    location = [part for part in first["loc"] if not _is_union_tag(part)]
    if location and location[0] == "body":
        location = location[1:]
    param = _param(location)
    message = str(first["msg"]).removeprefix("Value error, ")

    if first["type"] == "json_invalid":
        return InvalidRequestError(f"The request body is not valid JSON: {message}.", code="invalid_json")
    if first["type"] == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if first["type"] == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: '{param}'.", param=param)
    if param is None:
        return InvalidRequestError(f"Invalid request body: {message}.")

    received = first.get("input")
    if first["type"] == "value_error" or isinstance(received, dict | list):
        shown = ""
    else:
        shown = f" (got {json.dumps(received)[:100]})"
    return InvalidRequestError(f"Invalid value for '{param}': {message}{shown}.", param=param)


def _param(location: Sequence[Any]) -> str | None:
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else str(part)
    return param or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the name of the failed union member in the error location (``str``,
    # ``list[str]``, ``function-after[...]``, ``constrained-int``). No request field has such a name.
    return isinstance(part, str) and (part in _TYPE_TAGS or any(mark in part for mark in "[]-,"))
