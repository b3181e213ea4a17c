"""HTTP routes of the users API: transport only; rules are in service.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.users.schemas import (
    MessageHistory,
    MessageOut,
    UserOut,
    UserPage,
    UserPatch,
    UserWrite,
)

PROBLEM: dict[str, Any] = {"model": None, "content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid input; `errors` lists each field and why", **PROBLEM},
    401: {"description": "Missing or wrong bearer token", **PROBLEM},
    429: {"description": "Rate limited", **PROBLEM},
}


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def _session(context: Context) -> AsyncIterator[AsyncSession]:
    async with unit_of_work(context.sessions) as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session)]


def build_router(dependencies: list[object]) -> APIRouter:
    router = APIRouter(prefix="/users", tags=["users"], dependencies=dependencies, responses=ERRORS)  # type: ignore[arg-type]

    @router.post("", status_code=201, response_model=UserOut, responses={409: PROBLEM})
    async def create_user(body: UserWrite, context: Context, session: Session) -> UserOut:
        return await context.users.create(session, body, context.clock.now())

    @router.get("", response_model=UserPage)
    async def list_users(
        context: Context,
        session: Session,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> UserPage:
        return await context.users.list_page(session, limit, cursor)

    @router.get("/{user_id}", response_model=UserOut, responses={404: PROBLEM})
    async def get_user(user_id: uuid.UUID, context: Context, session: Session) -> UserOut:
        return await context.users.get(session, user_id)

    @router.put("/{user_id}", response_model=UserOut, responses={404: PROBLEM, 409: PROBLEM})
    async def replace_user(
        user_id: uuid.UUID, body: UserWrite, context: Context, session: Session
    ) -> UserOut:
        return await context.users.replace(session, user_id, body, context.clock.now())

    @router.patch("/{user_id}", response_model=UserOut, responses={404: PROBLEM, 409: PROBLEM})
    async def patch_user(
        user_id: uuid.UUID, body: UserPatch, context: Context, session: Session
    ) -> UserOut:
        return await context.users.patch(session, user_id, body, context.clock.now())

    @router.delete("/{user_id}", status_code=204, responses={404: PROBLEM})
    async def delete_user(user_id: uuid.UUID, context: Context, session: Session) -> Response:
        await context.users.delete(session, user_id, context.clock.now())
        return Response(status_code=204)

    @router.get("/{user_id}/messages", response_model=MessageHistory, responses={404: PROBLEM})
    async def user_messages(
        user_id: uuid.UUID, context: Context, session: Session
    ) -> MessageHistory:
        rows = await context.users.history(session, user_id)
        return MessageHistory(
            data=[MessageOut.model_validate(row, from_attributes=True) for row in rows]
        )

    return router
