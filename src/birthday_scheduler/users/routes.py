"""HTTP routes of the users API: transport only; rules are in service.py."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.api.json import JsonDocument
from birthday_scheduler.infra.db_faults import database_deadline, retry_stale
from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.users import history
from birthday_scheduler.users.schemas import UserOut, UserPage, UserPatch, UserWrite
from birthday_scheduler.users.service import Document

# How long a request may wait on the database in all (checkout, statements, commit) before
# it is answered 503 + Retry-After: a few seconds, so a silent database never hangs clients.
DATABASE_DEADLINE_S = 5.0
T = TypeVar("T")

# Each status /users* can answer with; the body is always the Problem schema (api/openapi.py).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid input; `errors` lists each field and why"},
    401: {"description": "Missing or wrong bearer token"},
    429: {"description": "Rate limited; retry after `Retry-After` seconds"},
    503: {"description": "Database unreachable; retry after `Retry-After` seconds"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No live user has this id"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "A live user already has this email address"}
}
BODY: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body larger than MAX_BODY_BYTES"},
    415: {"description": "Body is not application/json"},
}


async def _transaction(context: ApiContext, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction, committed before the response is sent (a dependency
    with `yield` would commit after it), within the request's database deadline. Work that
    failed on a dead connection before its commit (nothing was written) runs once more."""
    committing = False

    async def attempt() -> T:
        nonlocal committing
        async with context.sessions() as session:
            async with session.begin():
                result = await work(session)
                committing = True
            return result

    async with database_deadline(DATABASE_DEADLINE_S):
        return await retry_stale(attempt, safe=lambda _: not committing)


async def _statement(work: Awaitable[T]) -> T:
    """A hot path's own statement (service and repository run it) within the deadline."""
    async with database_deadline(DATABASE_DEADLINE_S):
        return await work


# The two hottest routes' work, shared by their FastAPI routes below and by api/hot_paths.py,
# which answers them without the framework.
async def create_user_document(context: ApiContext, body: UserWrite) -> Document:
    now = context.clock.now()
    return await _statement(context.users.create(context.engine, body, now))


async def read_user_document(context: ApiContext, user_id: uuid.UUID) -> Document:
    return await _statement(context.users.read(context.engine, user_id))


def build_router(context: ApiContext, dependencies: list[object]) -> APIRouter:
    """The routes close over `context` rather than ask for it per request: FastAPI resolves
    each dependency on every request."""
    router = APIRouter(prefix="/users", tags=["users"], dependencies=dependencies, responses=ERRORS)  # type: ignore[arg-type]

    @router.post("", status_code=201, response_model=UserOut, responses=CONFLICT | BODY)
    async def create_user(body: UserWrite) -> Response:
        return JsonDocument(await create_user_document(context, body), status_code=201)

    @router.get("", response_model=UserPage)
    async def list_users(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        page = await _statement(context.users.read_page(context.engine, limit, cursor))
        return JsonDocument(page)

    @router.get("/{user_id}", response_model=UserOut, responses=NOT_FOUND)
    async def get_user(user_id: uuid.UUID) -> Response:
        return JsonDocument(await read_user_document(context, user_id))

    @router.put("/{user_id}", response_model=UserOut, responses=NOT_FOUND | CONFLICT | BODY)
    async def replace_user(user_id: uuid.UUID, body: UserWrite) -> UserOut:
        now = context.clock.now()
        return await _transaction(context, lambda s: context.users.replace(s, user_id, body, now))

    @router.patch("/{user_id}", response_model=UserOut, responses=NOT_FOUND | CONFLICT | BODY)
    async def patch_user(user_id: uuid.UUID, body: UserPatch) -> UserOut:
        now = context.clock.now()
        return await _transaction(context, lambda s: context.users.patch(s, user_id, body, now))

    @router.delete("/{user_id}", status_code=204, responses=NOT_FOUND)
    async def delete_user(user_id: uuid.UUID) -> Response:
        now = context.clock.now()
        await _transaction(context, lambda s: context.users.delete(s, user_id, now))
        return Response(status_code=204)

    @router.get("/{user_id}/messages", response_model=history.MessagePage, responses=NOT_FOUND)
    async def user_messages(
        user_id: uuid.UUID,
        # The service checks kinds against the registry per request; the enum documents the
        # kinds registered when the app was built.
        kind: Annotated[
            str | None,
            Query(
                max_length=32,
                description="Only messages of this kind.",
                json_schema_extra={"enum": sorted(KINDS)},
            ),
        ] = None,
        status: Annotated[
            MessageStatus | None, Query(description="Only messages in this status.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="Rows per page.")] = 20,
        cursor: Annotated[
            str | None, Query(max_length=200, description="`nextCursor` of the previous page.")
        ] = None,
    ) -> history.MessagePage:
        query = history.HistoryQuery(kind=kind, status=status, limit=limit, cursor=cursor)
        return await _transaction(context, lambda s: history.page(s, user_id, query))

    return router
