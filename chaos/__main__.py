"""`make chaos`: the real processes under faults, then the ledger against what was delivered.

    .venv/bin/python -m chaos [--small] [--no-restarts] [--rabbitmq-node] [--seed N] [--keep-logs]

Runs the API, two schedulers, two workers and the message-service simulator (20% 500s, 5%
hangs, 1% accepted then never answered) as separate processes of the console script, on the
machine's PostgreSQL and RabbitMQ, in a database and a vhost made for the run and removed after
it. Users are created through the API (POST /users) so that 09:00 on their birthday, in their
zone, falls on one of the run's waves: whole UTC minutes, the first a few seconds after the
users exist, one a minute. In the seconds after each wave's instant, while its messages are in
flight, one worker or scheduler at a time is SIGKILLed and started again, RabbitMQ (its broker
application; with --rabbitmq-node the whole Erlang node) and PostgreSQL are restarted, and some
of the wave's unfinished users are PATCHed: a new last name, a zone that moves the birthday's
09:00 to the next wave, or the birthday moved to tomorrow. A process that exits by itself is
started again and reported. Then every occasion gets time to finish, and the ledger is checked
against the simulator's log of accepted deliveries (chaos/check.py).

stdout gets exactly one line:

    chaos: messages=2000 faults=37 lost=0 duplicates=0 late_p99_s=4.2

messages: the occasions made due (one birthday per user created). faults: the kills, the
service restarts and the PATCHes of users whose message was not yet finished when the PATCH
went out, each counted once. lost, duplicates, late_p99_s: see chaos/check.py. stderr has the
rest: each fault as it happens, then the counts by kind, the edits and their answers, the
processes that exited by themselves, dead/skipped/early/planned-twice counts, the simulator's
statistics, and the ledger rows of anything lost or duplicated. Exit 0 when nothing was lost,
duplicated, sent early, planned twice, misplanned or sent to no one; 1 otherwise; 2 when the
run could not be set up or was interrupted.

The full profile is 2,000 messages in five waves; `--small` (200 in two, a few kills, one
restart of each service) is what the test suite runs. `--no-restarts` leaves PostgreSQL and
RabbitMQ alone, for runs beside other people's tests on a shared machine. Whatever happens,
both services are left running, every process started is stopped, the database and the vhost
are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import asyncpg  # type: ignore[import-untyped]

from chaos import services
from chaos.check import Verdict, summary_line
from chaos.cluster import Cluster, clean_env
from chaos.observe import Gone
from chaos.profile import FULL, SERVICE_ENV, SIMULATOR_ENV, SMALL
from chaos.run import Chaos, Report, SetupFailed, say


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="200 messages, 2-3 minutes")
    parser.add_argument(
        "--no-restarts", action="store_true", help="kill processes, leave PostgreSQL and RabbitMQ"
    )
    parser.add_argument(
        "--rabbitmq-node",
        action="store_true",
        help="restart the whole RabbitMQ node (Erlang VM), not only its broker application",
    )
    parser.add_argument("--seed", type=int, default=None, help="fault and data sequence")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return parser.parse_args(argv)


def details(chaos: Chaos, verdict: Verdict, wall_s: float) -> list[str]:
    report: Report = chaos.report
    lines = [
        f"profile={chaos.profile.name} seed={chaos.seed} wall_s={wall_s:.0f}",
        f"faults {dict(sorted(report.faults.items()))} outages_s {report.outage_s}",
        f"patches {dict(report.patch_kinds)} answered {dict(report.patch_statuses)}",
        f"exits without a kill (restarted) {chaos.cluster.crashes}",
        f"accepted={verdict.accepted} dead={verdict.dead} skipped={verdict.skipped} "
        f"early={verdict.early} planned_twice={verdict.planned_twice} "
        f"misplanned={verdict.misplanned} unknown={verdict.unknown} "
        f"late_p50_s={verdict.late_p50_s:.1f} late_max_s={verdict.late_max_s:.1f}",
        f"simulator {report.stats}",
        *report.notes,
    ]
    if verdict.duplicate_keys:
        lines.append(f"duplicated occasions (keys): {verdict.duplicate_keys[:10]}")
    if verdict.latest:
        lines.append(f"latest (s, key): {[(round(s, 1), k) for s, k in verdict.latest]}")
    for row in report.suspects:
        lines.append(f"ledger {row}")
    return lines


def cleanup(started: float, database: str, vhost: str | None) -> None:
    """Both services running again, the run's vhost and database gone; each step on its own."""
    for problem in services.ensure_running():
        say(started, f"could not restore {problem}")
    try:
        if vhost is not None:
            services.delete_vhost(vhost)
    except RuntimeError as exc:
        say(started, f"vhost {vhost} not deleted: {exc}")
    try:
        asyncio.run(services.drop_database(database))
    except (OSError, asyncpg.PostgresError) as exc:
        say(started, f"database {database} not dropped: {exc}")


def main(argv: list[str]) -> int:
    args = parse(argv)
    profile = SMALL if args.small else FULL
    if args.no_restarts:
        profile = profile.without_restarts()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    name = f"bs_chaos_{secrets.token_hex(4)}"
    logs = Path(tempfile.mkdtemp(prefix="chaos-"))
    vhost: str | None = None
    verdict: Verdict | None = None
    chaos: Chaos | None = None
    failed_setup: str | None = None
    try:
        asyncio.run(services.create_database(name))
        vhost = services.create_vhost("chaos")
        env = {
            **clean_env(),
            **SERVICE_ENV,
            **SIMULATOR_ENV,
            "DATABASE_URL": services.database_url(name),
            "RABBITMQ_URL": services.vhost_url(vhost),
        }
        cluster = Cluster(env, logs)
        migrated = cluster.migrate()
        if migrated:
            raise SetupFailed(f"db migrate failed: {migrated}")
        chaos = Chaos(
            profile, seed, cluster, services.database_url(name), started, args.rabbitmq_node
        )
        say(started, f"chaos {profile.name}: seed {seed}, database {name}, vhost {vhost}")
        try:
            verdict = asyncio.run(chaos.drive())
        finally:
            cluster.stop_all()
    except (SetupFailed, Gone) as exc:
        failed_setup = str(exc)
    except KeyboardInterrupt:
        failed_setup = "interrupted (SIGINT or SIGTERM)"
    finally:
        # Whatever stopped the run, the clean-up runs to its end.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cleanup(started, name, vhost)
    wall_s = time.monotonic() - started
    if verdict is None or chaos is None:
        say(started, f"chaos run did not finish: {failed_setup}; logs kept in {logs}")
        return 2
    for line in details(chaos, verdict, wall_s):
        say(started, line)
    if verdict.ok and not args.keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        say(started, f"process logs in {logs}")
    sys.stdout.write(summary_line(verdict, chaos.report.fault_count) + "\n")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
