"""`/ready` and `/health/detailed` check the schema with one query per probe: the expected head
revision is read from the migration files once, when the app is built, and a database that is
behind still makes the process unready. On PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra import migrate


@pytest.fixture
def file_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time anything loads the migration scripts from disk, from now on."""
    reads: list[str] = []
    load = ScriptDirectory.from_config

    def counted(config: Any, *args: Any, **kwargs: Any) -> ScriptDirectory:
        reads.append(str(config.get_main_option("script_location")))
        return load(config, *args, **kwargs)

    monkeypatch.setattr(ScriptDirectory, "from_config", staticmethod(counted))
    return reads


@pytest.fixture
async def probe(resources: runtime.Resources) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.api_context(resources))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        yield http


async def test_probes_read_the_migration_files_once_at_start_up(
    file_reads: list[str], resources: runtime.Resources
) -> None:
    head = migrate.head_revision()
    file_reads.clear()  # setting the test database up read them too
    app = create_app(runtime.api_context(resources))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        for _ in range(10):
            ready = await http.get("/ready")
            assert ready.status_code == 200, ready.json()
            detailed = (await http.get("/health/detailed")).json()
            schema = detailed["components"]["schema"]
            assert (schema["status"], schema["revision"]) == ("up", head)
    # Building the app read the head; twenty probes read nothing more.
    assert len(file_reads) == 1


async def test_ready_is_503_while_the_database_is_a_revision_behind(
    probe: httpx.AsyncClient, resources: runtime.Resources
) -> None:
    head = migrate.head_revision()
    assert (await probe.get("/ready")).status_code == 200

    await migrate.downgrade(resources.engine, "-1")
    behind = await migrate.current_revision(resources.engine)
    assert behind is not None
    assert behind != head

    ready = await probe.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["schema"] == "down"
    detailed = await probe.get("/health/detailed")
    schema = detailed.json()["components"]["schema"]
    assert (schema["status"], schema["revision"], schema["expected"]) == ("down", behind, head)
    assert "birthday-scheduler db migrate" in schema["hint"]

    await migrate.upgrade(resources.engine)
    assert (await probe.get("/ready")).status_code == 200
