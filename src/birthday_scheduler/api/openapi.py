"""The OpenAPI document, shaped to what the API really answers.

Every error is RFC 9457 problem+json (one `Problem` schema), invalid input is 400 (never
FastAPI's 422), and the headers that come with 401, 429 and 503 are documented with them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details. Never carries a stack trace or SQL.",
    "type": "object",
    "required": ["type", "title", "status"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "description": "For invalid input: each field and why.",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "additionalProperties": False,
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
_SECONDS = {"type": "string", "pattern": "^[0-9]+$"}
HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    "429": {
        "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": _SECONDS}
    },
    "503": {
        "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": _SECONDS}
    },
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components["Problem"] = PROBLEM_SCHEMA
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                _problems(operation.get("responses", {}))
        app.openapi_schema = schema
    return app.openapi_schema


def _problems(responses: dict[str, dict[str, Any]]) -> None:
    responses.pop("422", None)
    for code, response in responses.items():
        if code.isdigit() and int(code) >= 400:
            response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
            if code in HEADERS:
                response["headers"] = HEADERS[code]
