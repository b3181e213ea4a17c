"""The machine's PostgreSQL and RabbitMQ, and the service processes a benchmark starts.

Every database is ``bs_bench_<random>`` and every vhost ``bench-<random>``; `Scope` drops
what it created, whatever happens. Service processes are the real console script
(``.venv/bin/birthday-scheduler``), run with ``PYTHONPATH=<code>`` when the suite measures
another copy of the package (``--code``): the venv's editable install is a plain path in a
``.pth`` file, which PYTHONPATH precedes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

# Reuse the tests' vhost helpers without making tests/ a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rabbit_vhost import create_vhost, delete_vhost, vhost_url

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE_PREFIX = "bs_bench_"
VHOST_PREFIX = "bench"
# Variables of the caller's environment that would configure the service behind our back.
_OWNED_PREFIXES = ("DATABASE_", "RABBITMQ_", "MESSAGE_SERVICE_", "SIMULATOR_", "API_TOKENS")
_OWNED = {"HOST", "PORT", "METRICS_PORT", "LOG_LEVEL", "LOG_FORMAT", "PYTHONPATH"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@dataclass
class Code:
    """Which copy of the package the service processes and in-process children import."""

    src: Path | None = None  # None: the venv's own (editable) install

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_OWNED_PREFIXES) and k not in _OWNED
        }
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        env.update(LOG_LEVEL="warn", LOG_FORMAT="json")
        env.update(extra)
        return env

    def package_file(self) -> str:
        """Where a child process finds `birthday_scheduler`: proof of which code it runs."""
        done = subprocess.run(
            [sys.executable, "-c", "import birthday_scheduler; print(birthday_scheduler.__file__)"],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    def has_command(self, *words: str) -> bool:
        """Whether the code's console script knows `words` (e.g. users import)."""
        done = subprocess.run(
            [SCRIPT, *words, "--help"],
            env=self.env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0


@dataclass
class Scope:
    """The databases and vhosts one run created: all removed by `close`."""

    databases: list[str] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)
    schema: str | None = None  # the migrated empty database the others are copied from
    # Every name ever created, for the record (`_meta.created`): tests check they are gone.
    created: list[str] = field(default_factory=list)

    async def database(self, code: Code, *, template: str | None = None) -> str:
        """A new database: a copy of `template`, or of the run's empty migrated schema."""
        if template is None:
            if self.schema is None:
                self.schema = await self._migrated(code)
            template = self.schema
        name = self._name()
        await admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def _name(self) -> str:
        name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:10]}"
        self.databases.append(name)
        self.created.append(f"database {name}")
        return name

    async def _migrated(self, code: Code) -> str:
        """An empty database migrated once by the code's own `db migrate`."""
        name = self._name()
        await admin(f'CREATE DATABASE "{name}"')
        done = await asyncio.to_thread(
            subprocess.run,
            [SCRIPT, "db", "migrate"],
            env=code.env(DATABASE_URL=database_url(name)),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"db migrate failed: {done.stderr[-500:]}")
        return name

    def vhost(self) -> str:
        name = create_vhost(VHOST_PREFIX)
        self.vhosts.append(name)
        self.created.append(f"vhost {name}")
        return name

    async def close(self) -> list[str]:
        """Drop everything created; the problems met (cleanup goes on past each)."""
        problems = []
        for name in self.databases:
            try:
                await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except (OSError, asyncpg.PostgresError) as exc:
                problems.append(f"drop database {name}: {exc}")
        for vhost in self.vhosts:
            try:
                delete_vhost(vhost)
            except RuntimeError as exc:
                problems.append(f"delete vhost {vhost}: {exc}")
        self.databases.clear()
        self.vhosts.clear()
        self.schema = None
        return problems


def amqp_url(vhost: str) -> str:
    return vhost_url(vhost)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the process's peak resident set) in MB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class Service:
    """One service process: `birthday-scheduler <command>` (or any argv) with its own log."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log: Path
    ready_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    peak_mb: float | None = None

    def start(self) -> None:
        with self.log.open("wb") as sink:  # a file, not a pipe nobody reads
            self.process = subprocess.Popen(
                list(self.argv), env=self.env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
            )

    def wait_ready(self, within_s: float = 60.0) -> None:
        if self.ready_url is None:
            return
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {within_s:.0f}s: {self.tail()}")

    def terminate(self) -> None:
        """Read its peak RSS and send SIGTERM (no wait: `stop` waits)."""
        process = self.process
        if process is not None and process.poll() is None:
            self.peak_mb = peak_rss_mb(process.pid)  # VmHWM: read while it still exists
            process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 20.0) -> None:
        process = self.process
        if process is None:
            return
        self.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        self.process = None

    def tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Services:
    """The service processes of a run; remembers every one's peak RSS after it stopped."""

    code: Code
    logs: Path
    running: list[Service] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)
    started: int = 0

    def start(
        self, name: str, command: Sequence[str], ready_path: str, port: int, **env: str
    ) -> Service:
        ready = f"http://127.0.0.1:{port}{ready_path}"
        self.started += 1
        log = self.logs / f"{self.started:02d}-{name}.log"
        service = Service(name, [SCRIPT, *command], self.code.env(**env), log, ready)
        service.start()
        self.running.append(service)
        return service

    def start_raw(self, name: str, argv: Sequence[str], ready_url: str, **env: str) -> Service:
        """A process that is not the package's (the bare app): never counted in the RSS."""
        service = Service(name, argv, self.code.env(**env), self.logs / f"{name}.log", ready_url)
        service.start()
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.running:
            self.running.remove(service)
            if service.peak_mb is not None:
                self.peaks[service.name] = max(self.peaks.get(service.name, 0.0), service.peak_mb)

    def stop_all(self) -> None:
        """Stop them all, the simulator last (workers finish in-flight deliveries through it);
        the others get SIGTERM at once, so their shutdowns overlap."""
        last = [service for service in self.running if service.name == "simulator"]
        first = [service for service in self.running if service not in last]
        for group in (first, last):
            for service in group:
                service.terminate()
            for service in group:
                self.stop(service)
