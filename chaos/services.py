"""The machine's PostgreSQL and RabbitMQ: a database and a vhost of the run's own, restarts,
and the guarantee that both are running again when the run ends, however it ends.

Restarting either is felt by everything else that uses them on this machine for a few seconds;
that is the point of the run, so it is done a few times per run, never in a loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

# Reuse the tests' vhost helpers without making tests/ a package (as bench/ does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rabbit_vhost import create_vhost, delete_vhost, rabbitmqctl, vhost_url

__all__ = [
    "create_database",
    "create_vhost",
    "delete_vhost",
    "drop_database",
    "ensure_running",
    "restart_postgres",
    "restart_rabbitmq",
    "vhost_url",
]

ADMIN_DSN = os.environ.get("CHAOS_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST = "127.0.0.1"
READY_WITHIN_S = 120.0


def database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _run(*command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed commands, no shell
        command, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: float(v))
    return versions[-1]


def postgres_ready() -> bool:
    return _run("pg_isready", "-q", "-h", PG_HOST, timeout=10).returncode == 0


def _wait(check: Callable[[], bool], what: str, within: float = READY_WITHIN_S) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {within:.0f}s")
        time.sleep(0.2)


def restart_postgres() -> float:
    """`pg_ctlcluster … restart` (fast shutdown: every connection is cut); seconds it took."""
    started = time.monotonic()
    done = _run("pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "restart")
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster restart failed: {done.stderr.strip()}")
    _wait(postgres_ready, "PostgreSQL")
    return time.monotonic() - started


def _ensure_postgres() -> None:
    if postgres_ready():
        return
    _run("pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start")
    _wait(postgres_ready, "PostgreSQL")


# --- RabbitMQ --------------------------------------------------------------------------------


def rabbitmq_ready() -> bool:
    return _run("rabbitmqctl", "-q", "await_startup", "--timeout", "5", timeout=30).returncode == 0


def _node_pid() -> int | None:
    done = _run("rabbitmqctl", "-q", "status", "--formatter", "json", timeout=30)
    if done.returncode != 0:
        return None
    pid = json.loads(done.stdout).get("pid")
    return int(pid) if pid is not None else None


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _start_node() -> None:
    # As root the packaged script switches to the rabbitmq user itself.
    _run("rabbitmq-server", "-detached", timeout=60)
    _run("rabbitmqctl", "-q", "await_startup", "--timeout", str(int(READY_WITHIN_S)))
    _wait(rabbitmq_ready, "RabbitMQ")


def restart_rabbitmq(whole_node: bool = False) -> float:
    """Restart RabbitMQ and wait until it serves again; the seconds it took.

    By default the broker application (`rabbitmqctl stop_app` / `start_app`): every queue
    process, connection and channel stops, durable queues and persistent messages are recovered
    from disk, the Erlang VM stays up; about 10 s here. `whole_node` stops the VM too and
    starts the node again (`rabbitmq-server -detached`): the same for the clients, but 30-40 s
    here, most of it booting Erlang, which every other user of this broker waits for too.
    """
    started = time.monotonic()
    if not whole_node:
        for step in ("stop_app", "start_app"):
            done = _run("rabbitmqctl", "-q", step)
            if done.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {step} failed: {done.stderr.strip()}")
        _wait(rabbitmq_ready, "RabbitMQ")
        return time.monotonic() - started
    pid = _node_pid()
    stopped = _run("rabbitmqctl", "-q", "stop")
    if stopped.returncode != 0:
        raise RuntimeError(f"rabbitmqctl stop failed: {stopped.stderr.strip()}")
    if pid is not None:
        _wait(lambda: _gone(pid), "RabbitMQ node exit", within=60)
    _start_node()
    return time.monotonic() - started


def _ensure_rabbitmq() -> None:
    if rabbitmq_ready():
        return
    if _run("rabbitmqctl", "-q", "start_app").returncode == 0 and rabbitmq_ready():
        return
    _start_node()


def ensure_running() -> list[str]:
    """Start whichever of PostgreSQL and RabbitMQ is down; the problems met, if any."""
    problems = []
    for name, ensure in (("PostgreSQL", _ensure_postgres), ("RabbitMQ", _ensure_rabbitmq)):
        try:
            ensure()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{name}: {exc}")
    return problems


def rabbitmq_vhost_exists(name: str) -> bool:
    return name in rabbitmqctl("list_vhosts", "--no-table-headers").split()
