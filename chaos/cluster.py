"""The run's processes: the real console script, one OS process per role and replica.

The cluster is also the run's supervisor, as Kubernetes or a Procfile runner would be: a
process that exits while nobody killed it is counted as a crash and started again. Only
processes started here are ever signalled, by their own pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
# Variables of the caller's environment that would configure the service behind the run's back.
_OWNED_PREFIXES = ("DATABASE_", "RABBITMQ_", "MESSAGE_SERVICE_", "SIMULATOR_", "API_TOKENS")
_OWNED = {"HOST", "PORT", "METRICS_PORT", "LOG_LEVEL", "LOG_FORMAT"}
# A process that exits sooner than this after its start failed to start (see `supervise`).
STARTUP_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(_OWNED_PREFIXES) and k not in _OWNED
    }


@dataclass
class Member:
    """One replica slot (e.g. worker 1); its process changes with every restart."""

    role: str
    slot: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    # Set while the run holds it down on purpose (killed, waiting for its restart).
    held_down: bool = False
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.role}{self.slot}"

    @property
    def ops_base(self) -> str:
        """Where its /ready answers: the ops port of a worker or scheduler, the API's port."""
        return f"http://127.0.0.1:{self.env.get('METRICS_PORT') or self.env['PORT']}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    base_env: dict[str, str]
    logs: Path
    members: list[Member] = field(default_factory=list)
    crashes: dict[str, int] = field(default_factory=dict)
    exit_codes: list[tuple[str, int]] = field(default_factory=list)

    def add(self, role: str, slot: int, **env: str) -> Member:
        member = Member(role, slot, {**self.base_env, **env})
        self.members.append(member)
        return member

    def start(self, member: Member) -> None:
        member.generation += 1
        log = self.logs / f"{member.name}-{member.generation}.log"
        command = "message-service" if member.role == "simulator" else member.role
        # A file, not a pipe nobody reads: a full pipe would stall the process.
        with log.open("wb") as sink:
            member.process = subprocess.Popen(  # noqa: S603 - our own console script
                [SCRIPT, command], env=member.env, stdout=sink, stderr=subprocess.STDOUT
            )
        member.held_down = False
        member.started_at = time.monotonic()

    def migrate(self) -> str:
        """`birthday-scheduler db migrate` on the run's database; "" or what went wrong."""
        done = subprocess.run(  # noqa: S603 - our own console script
            [SCRIPT, "db", "migrate"], env=self.base_env, capture_output=True, timeout=120,
            check=False,
        )  # fmt: skip
        return "" if done.returncode == 0 else done.stderr.decode(errors="replace")[-500:]

    def of_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def kill(self, member: Member) -> bool:
        """SIGKILL the member's process and hold the slot down; False if it was not running."""
        process = member.process
        if process is None or process.poll() is not None:
            return False
        member.held_down = True
        process.send_signal(signal.SIGKILL)
        self.exit_codes.append((member.name, process.wait(timeout=10)))
        return True

    def supervise(self) -> list[tuple[str, float]]:
        """Start again every process that exited without being killed: (slot, seconds it ran).

        One that exits within seconds of its start (the broker or database it needs is still
        down) is a start-up failure, as a Kubernetes crash loop would show; one that had been
        running is a crash. Both are counted, apart."""
        restarted = []
        for member in self.members:
            process = member.process
            if member.held_down or process is None or process.poll() is None:
                continue
            uptime = time.monotonic() - member.started_at
            self.exit_codes.append((member.name, process.returncode))
            kind = "failed_start" if uptime < STARTUP_S else "crashed"
            self.crashes[f"{member.name} {kind}"] = self.crashes.get(f"{member.name} {kind}", 0) + 1
            self.start(member)
            restarted.append((member.name, uptime))
        return restarted

    def stop_all(self, grace_s: float = 15.0) -> None:
        """SIGTERM every live process, SIGKILL what is left after the grace, reap them all."""
        running = [m.process for m in self.members if m.alive()]
        for process in running:
            if process is not None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def log_tail(self, member: Member, lines: int = 5) -> list[str]:
        log = self.logs / f"{member.name}-{member.generation}.log"
        if not log.exists():
            return []
        return log.read_text(errors="replace").splitlines()[-lines:]
