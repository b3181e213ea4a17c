"""Acceptance: the commands in docs/RUNBOOK.md work, run as written against a live instance.

Every shell block of the runbook is read; each command that talks to the service or its data
(`birthday-scheduler …`, `make …`, `curl …`, `psql …`, `rabbitmqctl …`) runs, in document order,
against real processes: `birthday-scheduler all` (API on a free port standing in for
http://127.0.0.1:8000, built-in simulator), a separate `worker` (its METRICS_PORT standing in for
http://127.0.0.1:9100) and the `message-service` simulator, on a fresh PostgreSQL database and
RabbitMQ vhost. Each must exit 0. A dead letter is produced first, so `dlq list`/`replay`/`purge`
act on something real and `<id>` is a real id.

Commands for tools this machine cannot drive (a cluster, Docker, a cloud account) are listed in
ENVIRONMENT_COMMANDS with the reason; a command of any other kind fails the test until it is
either made runnable here or listed with a reason.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from birthday_scheduler.infra.migrate import alembic_config
from rabbit_vhost import create_vhost, delete_vhost, rabbitmqctl, vhost_url
from support import child_env, drop_database, free_port, pg_admin, pg_url, wait_for

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
BIN = Path(sys.executable).parent
SCRIPT = str(BIN / "birthday-scheduler")
API_BASE = "http://127.0.0.1:8000"
OPS_BASE = "http://127.0.0.1:9100"

RUN_PREFIXES = ("birthday-scheduler ", "make ", "curl ", "psql ", "rabbitmqctl ")
# Long-running processes: the test starts them itself instead of running the runbook's line.
PROCESS_COMMANDS = {"all", "api", "worker", "scheduler", "message-service"}
# `make` targets that are safe and fast against a live instance. The others in the Makefile:
# run and test are the very commands this suite backs (test would recurse, run would start a
# second instance), install/clean change the virtualenv, lint/typecheck/unit/bench are not
# operations, db-rollback is covered by `birthday-scheduler db rollback` below.
SAFE_MAKE_TARGETS = {"db-status", "db-migrate"}
# Runbook commands matched by these substrings are deliberately not run; each must still
# appear in the runbook (checked), so the list cannot go stale.
EXCLUDED = {
    "make test": "it is the whole test suite, this test included: running it here would recurse",
    "pg_stat_statements": "needs the pg_stat_statements extension in shared_preload_libraries, "
    "which this machine's PostgreSQL does not load; the query's columns are PostgreSQL 13+'s",
}
# Commands for tools outside this machine, by their first word.
ENVIRONMENT_COMMANDS = {
    "kubectl": "needs a Kubernetes cluster",
    "docker": "needs a Docker daemon and a registry",
    "git": "changes the checkout under test",
    "aws": "needs a cloud account",
    "rabbitmqadmin": "needs RabbitMQ's management plugin (HTTP API), not enabled on this "
    "machine's broker; rabbitmqctl equivalents in the same sections are run",
    "watch": "runs forever; the command it repeats is run on its own",
    ".venv/bin/python": "asks PyPI for newer versions (network, not the service)",
    "scripts/restore.sh": "covered by tests/acceptance/test_backup_restore.py on its own database",
    "DATABASE_URL=postgresql://backup@db.internal/birthday_scheduler": "an example host; "
    "scripts/backup.sh is covered by tests/acceptance/test_backup_restore.py",
    "0": "a crontab line, not a command",
}
PLACEHOLDER = re.compile(r"<[a-z][a-z-]*>")


@dataclass
class Command:
    text: str
    line: int


@dataclass
class Live:
    api: str
    ops: str
    env: dict[str, str]
    dead_id: str
    previous_revision: str
    logs: list[Path] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def check_alive(self, before: str) -> None:
        for process, log_path in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise AssertionError(
                    f"{log_path.stem} exited {process.returncode} before `{before}`:\n"
                    + tail(log_path)
                )


def runbook_commands() -> list[Command]:
    """Commands from the ```bash blocks, continuation lines joined, comments dropped."""
    commands: list[Command] = []
    in_block = False
    pending = ""
    start = 0
    for number, raw in enumerate(RUNBOOK.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = stripped == "```bash"
            continue
        if not in_block or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(Command(pending + stripped, start))
        pending = ""
    return commands


def classify(command: Command) -> str | None:
    """None when the command is to be run here, else why not."""
    for needle, reason in EXCLUDED.items():
        if needle in command.text:
            return reason
    if command.text.startswith(RUN_PREFIXES):
        return None
    first = command.text.split()[0]
    for prefix, reason in ENVIRONMENT_COMMANDS.items():
        if first == prefix or first.startswith(prefix):
            return reason
    raise AssertionError(
        f"RUNBOOK.md:{command.line}: `{command.text}` is neither run by this test nor listed "
        "with a reason in ENVIRONMENT_COMMANDS"
    )


def test_runbook_is_self_contained_and_its_exclusions_are_current() -> None:
    text = RUNBOOK.read_text()
    assert "../shared" not in text
    assert "/work/" not in text
    commands = [c.text for c in runbook_commands()]
    for needle in EXCLUDED:
        assert any(needle in c for c in commands), f"stale exclusion: {needle!r}"
    for c in commands:
        classify(Command(c, 0))
    # The operators' essentials are in the runbook, written against our CLI.
    for essential in (
        "birthday-scheduler db migrate",
        "birthday-scheduler db rollback --to <revision>",
        "make test",
        "birthday-scheduler dlq list",
        "birthday-scheduler dlq purge --yes",
        "birthday-scheduler messages purge --older-than 90d",
        'psql "$DATABASE_URL" -c "SELECT status, count(*) FROM message_logs GROUP BY status;"',
        "curl -fsS http://127.0.0.1:9100/metrics | grep circuit_breaker_state",
    ):
        assert essential in commands, essential
    assert "jq 'select(.level == \"error\")'" in text
    assert 'queue_depth{queue="birthday_messages"}' in text
    assert 'rabbitmq_queue_messages{queue="birthday_messages"}' in text


# --- the live instance -------------------------------------------------------------------------


def service_env(**extra: str) -> dict[str, str]:
    """A clean environment with this venv's commands first on PATH."""
    env = child_env(**extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """An empty database: the runbook's own `db migrate` builds the schema."""
    name = f"bs_runbook_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        await drop_database(name)


@pytest.fixture
def vhost() -> Iterator[str]:
    name = create_vhost("runbook")
    try:
        yield name
    finally:
        delete_vhost(name)


def previous_revision() -> str:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    assert head is not None
    down = scripts.get_revision(head).down_revision
    assert isinstance(down, str), "the runbook's rollback needs a revision before head"
    return down


def psql(database_url: str, query: str) -> list[str]:
    result = subprocess.run(
        ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database_url, "-c", query],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def dlq_depth(vhost: str) -> int:
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == "birthday_messages_dlq":
            return int(count)
    return 0


@pytest.fixture
def live(fresh_database: str, vhost: str, tmp_path: Path) -> Iterator[Live]:
    common = {
        "DATABASE_URL": fresh_database,
        "RABBITMQ_URL": vhost_url(vhost),
        "SHUTDOWN_GRACE_S": "5",
    }
    migrated = subprocess.run(
        [SCRIPT, "db", "migrate"],
        env=service_env(**common),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr.decode()[-2000:]

    api_port, ops_port, simulator_port = free_port(), free_port(), free_port()
    simulator_url = f"http://127.0.0.1:{simulator_port}/send"
    # Every delivery fails with a 500 and one attempt is all it gets: the message goes dead.
    failing = {"SIMULATOR_FAILURE_RATE_500": "1", "MAX_DELIVERY_ATTEMPTS": "1"}
    specs = {
        "message-service": service_env(PORT=str(simulator_port), **failing),
        "all": service_env(PORT=str(api_port), **common, **failing),
        "worker": service_env(
            METRICS_PORT=str(ops_port), MESSAGE_SERVICE_URL=simulator_url, **common, **failing
        ),
    }
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for name, env in specs.items():
            log_path = tmp_path / f"{name}.log"
            logs.append(log_path)
            with log_path.open("wb") as log_file:
                processes.append(
                    subprocess.Popen(
                        [SCRIPT, name],
                        cwd=tmp_path,
                        env=env,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )

        def all_ready() -> bool:
            for process, log_path in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise AssertionError(f"{log_path.name}: exited\n{tail(log_path)}")
            return (
                http_ok(f"http://127.0.0.1:{simulator_port}/health")
                and http_ok(f"http://127.0.0.1:{api_port}/ready")
                and http_ok(f"http://127.0.0.1:{ops_port}/ready")
            )

        wait_for(all_ready, "processes ready", within=45)

        created = httpx.post(
            f"http://127.0.0.1:{api_port}/users",
            json={
                "firstName": "Runbook",
                "lastName": "Check",
                "email": f"runbook-{uuid.uuid4().hex[:8]}@example.com",
                "dateOfBirth": "1990-01-01",
                "timezoneOffset": 0,
            },
            timeout=10,
        )
        assert created.status_code == 201, created.text
        # A new user's first message is next year; pull its schedule to now so the scheduler
        # plans it on its next tick (the failing simulator then sends it to the DLQ).
        user_id = str(uuid.UUID(created.json()["id"]))
        psql(
            fresh_database,
            f"UPDATE message_schedules SET next_fire_at = now() WHERE user_id = '{user_id}'",
        )
        dead: list[str] = []

        def dead_lettered() -> bool:
            dead[:] = psql(fresh_database, "SELECT id FROM message_logs WHERE status = 'dead'")
            return bool(dead) and dlq_depth(vhost) >= 1

        wait_for(dead_lettered, "a dead letter", within=30)

        yield Live(
            api=f"http://127.0.0.1:{api_port}",
            ops=f"http://127.0.0.1:{ops_port}",
            env=service_env(**common, RABBITMQ_VHOST=vhost, MESSAGE_SERVICE_URL=simulator_url),
            dead_id=dead[0],
            previous_revision=previous_revision(),
            logs=logs,
            processes=processes,
        )
    finally:
        stop(processes)


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def prepare(command: str, live: Live) -> str:
    """The runbook's text with this instance's addresses and real values for placeholders."""
    text = command.replace(API_BASE, live.api).replace(OPS_BASE, live.ops)
    text = text.replace("<id>", live.dead_id).replace("<revision>", live.previous_revision)
    left = PLACEHOLDER.findall(text)
    assert not left, f"`{command}`: no value for placeholder(s) {left}"
    if text.startswith("make "):
        target = shlex.split(text)[1]
        assert target in SAFE_MAKE_TARGETS, f"`{command}`: make target not vetted as safe"
        # -o: never rebuild the virtualenv stamp from inside the test run (that would
        # pip-install into the interpreter running this test).
        text = f"make -o {shlex.quote('.venv/.installed')} {text[len('make ') :]}"
    if text.startswith("curl ") and (live.api in text or live.ops in text):
        flags = [w for w in shlex.split(text) if w.startswith("-") and not w.startswith("--")]
        assert "--fail" in text or any("f" in w[1:] for w in flags), (
            f"`{command}`: health and metrics curls need -f so failures show in the exit status"
        )
    if text.startswith("curl "):
        assert live.api in text or live.ops in text or "$MESSAGE_SERVICE_URL" in text, (
            f"`{command}`: curl must target the API, the ops port or $MESSAGE_SERVICE_URL"
        )
    return text


@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.timeout(300)
def test_every_runbook_command_runs_against_a_live_instance(live: Live) -> None:
    failures: list[str] = []
    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    for command in runbook_commands():
        if classify(command) is not None:
            continue
        words = command.text.split()
        if words[0] == "birthday-scheduler" and words[1] in PROCESS_COMMANDS:
            continue  # started above as real processes
        text = prepare(command.text, live)
        if text in ran:
            continue  # the same command against the same instance: once is enough
        live.check_alive(before=text)
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            cwd=ROOT,
            env=live.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        ran[text] = result
        if result.returncode != 0:
            failures.append(
                f"RUNBOOK.md:{command.line}: `{text}` exited {result.returncode}\n"
                f"stdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-1500:]}"
            )
        if " db rollback" in text and result.returncode == 0:
            # The code under test is the newest release: bring the schema back to its head
            # so the rest of the runbook (and /ready) sees the service as deployed.
            again = subprocess.run(
                [SCRIPT, "db", "migrate"],
                env=live.env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert again.returncode == 0, again.stderr[-2000:]
    logs = "\n".join(f"--- {p.name}\n{tail(p)}" for p in live.logs)
    assert not failures, "\n\n".join(failures) + "\n\nprocess logs:\n" + logs

    kinds = {text.split()[0] for text in ran}
    assert {"birthday-scheduler", "make", "curl", "psql", "rabbitmqctl"} <= kinds, kinds
    # What ran did what the runbook says: the dead letter was listed and then replayed.
    listed = [r.stdout for t, r in ran.items() if t.endswith("dlq list")]
    assert listed
    assert live.dead_id in listed[0], listed
    replayed = next(r.stdout for t, r in ran.items() if f"--id {live.dead_id}" in t)
    assert f'"replayed": ["{live.dead_id}"]' in replayed, replayed
