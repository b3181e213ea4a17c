"""The `birthday-scheduler` console script: one command per process, plus operations tools."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from birthday_scheduler.errors import BirthdaySchedulerError, ConfigurationError
from birthday_scheduler.infra import eventloop
from birthday_scheduler.infra.logging import configure_logging
from birthday_scheduler.settings import Settings, load_settings

T = TypeVar("T")
app = typer.Typer(
    name="birthday-scheduler",
    help="Birthday messages at 09:00 local time, exactly once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations (reversible).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter inspection and replay.", no_args_is_help=True)
messages_app = typer.Typer(help="Message log maintenance.", no_args_is_help=True)
users_app = typer.Typer(help="User administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dlq_app, name="dlq")
app.add_typer(messages_app, name="messages")
app.add_typer(users_app, name="users")


def _run(job: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Load and check settings, configure logs, run the job; bad config is one clear line."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return eventloop.run(job(settings))
    except ConfigurationError as exc:
        typer.echo(f"birthday-scheduler: {exc}", err=True)
        raise typer.Exit(2) from None
    except BirthdaySchedulerError as exc:
        typer.echo(f"birthday-scheduler: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("all")
def run_all() -> None:
    """API + scheduler + worker in one process (embedded default without DATABASE_URL)."""
    from birthday_scheduler.entrypoints import combined

    _run(combined.main)


@app.command("api")
def run_api() -> None:
    """The HTTP API only."""
    from birthday_scheduler.entrypoints import api

    _run(api.main)


@app.command("scheduler")
def run_scheduler() -> None:
    """Find due messages and enqueue them (safe as several replicas)."""
    from birthday_scheduler.entrypoints import scheduler

    _run(scheduler.main)


@app.command("worker")
def run_worker() -> None:
    """Consume the queue and deliver (safe as several replicas)."""
    from birthday_scheduler.entrypoints import worker

    _run(worker.main)


@app.command("message-service")
def run_message_service(
    host: Annotated[str, typer.Option(envvar="HOST", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", help="Port.")] = 8080,
) -> None:
    """The simulator of the external message service (SIMULATOR_* variables tune it)."""
    from birthday_scheduler.entrypoints import simulator

    _run(lambda settings: simulator.main(settings, host, port))


# --- db ----------------------------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate() -> None:
    """Upgrade the schema to the newest revision."""
    from birthday_scheduler.entrypoints import admin

    _run(admin.db_migrate)


@db_app.command("rollback")
def db_rollback(
    to: Annotated[
        str | None, typer.Option("--to", help="Target revision, or `base`; default one step.")
    ] = None,
) -> None:
    """Downgrade the schema one revision, or to --to REV."""
    from birthday_scheduler.entrypoints import admin

    _run(lambda settings: admin.db_rollback(settings, to or "-1"))


@db_app.command("status")
def db_status() -> None:
    """Show the current and newest schema revisions."""
    from birthday_scheduler.entrypoints import admin

    up_to_date = _run(admin.db_status)
    raise typer.Exit(0 if up_to_date else 1)


# --- dlq ---------------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100) -> None:
    """Show dead letters (one JSON object per line) without removing them."""
    from birthday_scheduler.entrypoints import admin

    _run(lambda settings: admin.dlq_list(settings, limit))


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[
        list[uuid.UUID] | None, typer.Option("--id", help="Message id (repeatable).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (a report line per page).")
    ] = False,
) -> None:
    """Reset dead messages and send them again, exactly once; finds an id at any depth."""
    from birthday_scheduler.entrypoints import admin

    if bool(ids) == replay_all:
        typer.echo("birthday-scheduler: give --id ID (repeatable) or --all", err=True)
        raise typer.Exit(2)
    _run(lambda settings: admin.dlq_replay(settings, None if replay_all else ids))


@dlq_app.command("purge")
def dlq_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm dropping every dead letter.")] = False,
) -> None:
    """Drop every dead letter (their ledger rows stay `dead`)."""
    from birthday_scheduler.entrypoints import admin

    if not yes:
        typer.echo("birthday-scheduler: refusing to purge without --yes", err=True)
        raise typer.Exit(2)
    _run(admin.dlq_purge)


# --- messages ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_age(value: str) -> timedelta:
    match = _DURATION.match(value.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 90d, 12h or 30m")
    amount, unit = int(match.group(1)), match.group(2)
    return {
        "d": timedelta(days=amount),
        "h": timedelta(hours=amount),
        "m": timedelta(minutes=amount),
    }[unit]


@messages_app.command("purge")
def messages_purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of finished message logs to delete, e.g. 90d.")
    ],
) -> None:
    """Delete finished message logs (sent, dead, skipped, cancelled) older than the age given."""
    from birthday_scheduler.entrypoints import admin

    age = parse_age(older_than)
    _run(lambda settings: admin.messages_purge(settings, age))


# --- users -------------------------------------------------------------------------------------


@users_app.command("import")
def users_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with a header of the API's field names: firstName, lastName, email, "
            "dateOfBirth, timezone and/or timezoneOffset; optional anniversaryDate, "
            "sendLocalTime, notifications (a JSON object)."
        ),
    ],
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="CSV of rejected rows (line,field,reason); default FILE.rejected.csv."
        ),
    ] = None,
) -> None:
    """Create users in bulk, each validated and planned as POST /users would; safe to re-run.

    Exit 0: every row imported or already present; 1: some rows rejected (the valid ones are
    imported); 2: the file cannot be read or its header is wrong.
    """
    from birthday_scheduler.users import importer

    report_path = report or importer.default_report_path(file)

    async def job(settings: Settings) -> importer.ImportSummary | importer.ImportFileError:
        try:
            with importer.progress_bar(file) as progress:
                return await importer.run(settings, file, report_path, progress)
        except importer.ImportFileError as exc:
            return exc

    outcome = _run(job)
    if isinstance(outcome, importer.ImportFileError):
        typer.echo(f"birthday-scheduler: {outcome}", err=True)
        raise typer.Exit(2)
    sys.stdout.write(outcome.line(report_path) + "\n")
    raise typer.Exit(1 if outcome.rejected else 0)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


def main() -> None:
    app()
