"""Every API error renders here as RFC 9457 problem+json; nothing leaks a trace or SQL."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from birthday_scheduler.errors import DatabaseUnavailableError, FieldProblem, ProblemError
from birthday_scheduler.infra.db_faults import is_unavailable
from birthday_scheduler.infra.logging import get_logger

PROBLEM_JSON = "application/problem+json"
log = get_logger(__name__)


def problem_response(problem: ProblemError, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors:
        body["errors"] = [{"field": e.field, "reason": e.reason} for e in problem.errors]
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header")]
    # Union branches add their type name ("timezoneOffset.int"); the caller only needs the field.
    parts = [p for p in parts if p not in ("int", "str", "function-before[_offset()]")]
    return ".".join(parts) or "body"


def validation_problem(errors: list[dict[str, Any]]) -> ProblemError:
    problems: list[FieldProblem] = []
    for error in errors:
        if error.get("type") == "json_invalid":
            return ProblemError(400, "Bad Request", "The body is not valid JSON.")
        reason = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            reason = "is not a known field"
        elif error.get("type") == "missing":
            reason = "is required"
        problems.append(FieldProblem(_field_name(tuple(error.get("loc", ()))), reason))
    return ProblemError(400, "Bad Request", "The request is invalid.", problems)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(list(exc.errors())), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not Found", 405: "Method Not Allowed"}
        problem = ProblemError(exc.status_code, titles.get(exc.status_code, "Error"), None)
        problem.headers = dict(exc.headers or {})
        return problem_response(problem, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(unexpected_problem(exc, request.url.path), request.url.path)


def unexpected_problem(exc: Exception, path: str) -> ProblemError:
    """What an exception no handler knows is answered with, logged without its message."""
    if is_unavailable(exc):
        # A database call outside the routes' deadline (the console, say): still a 503.
        log.warning("db.unavailable", error=type(exc).__name__, path=path)
        return DatabaseUnavailableError()
    log.error("http.unhandled_error", error=type(exc).__name__, path=path)
    return ProblemError(500, "Internal Server Error", "Something went wrong on our side.")
