"""Acceptance: the real console script, spawned as an operator would run it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import child_env, free_port, wait_for

SCRIPT = str(Path(sys.executable).parent / "birthday-scheduler")
RUNBOOK_BODY = {
    "firstName": "Test",
    "lastName": "User",
    "email": "test@example.com",
    "dateOfBirth": "1990-01-01T00:00:00Z",
    "timezoneOffset": 0,
}


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"process exited early with {process.returncode}")
        try:
            return httpx.get(f"{base}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, "service ready", within=timeout)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_all_on_embedded_default_serves_runbook_example_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [SCRIPT, "all"],
        cwd=tmp_path,
        env=child_env(PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        created = httpx.post(f"{base}/users", json=RUNBOOK_BODY, timeout=5)
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        fetched = httpx.get(f"{base}/users/{user_id}", timeout=5)
        assert fetched.status_code == 200
        assert fetched.json()["email"] == "test@example.com"
        assert (tmp_path / "var" / "birthday-scheduler.sqlite3").exists()
    finally:
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.decode()[-2000:]
    lines = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "all.started" in events
    assert events[-1] == "all.stopped"
    assert all({"time", "level", "event"} <= line.keys() for line in lines)
    assert "test@example.com" not in output.decode()


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["all"], "PORT", "not-a-port"),
        (["api"], "LOG_LEVEL", "loud"),
        (["worker"], "WORKER_CONCURRENCY", "-3"),
        (["db", "status"], "DATABASE_URL", "oracle://db"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, command: list[str], variable: str, value: str
) -> None:
    result = subprocess.run(
        [SCRIPT, *command],
        cwd=tmp_path,
        env=child_env(**{variable: value}),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    stderr = result.stderr.decode().strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert variable in stderr


def test_api_on_public_address_without_tokens_refuses(tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "api"],
        cwd=tmp_path,
        env=child_env(HOST="0.0.0.0", PORT=str(free_port())),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "API_TOKENS" in result.stderr.decode()


def test_db_commands_on_sqlite(tmp_path: Path) -> None:
    env = child_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [SCRIPT, "db", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )

    assert run("status").returncode == 1  # not migrated yet
    assert run("migrate").returncode == 0
    status = run("status")
    assert status.returncode == 0
    assert json.loads(status.stdout)["upToDate"] is True
    assert run("rollback").returncode == 0
    assert json.loads(run("status").stdout)["current"] == "0005"  # one step back from head
    assert run("rollback", "--to", "base").returncode == 0
    assert json.loads(run("status").stdout)["current"] is None
    assert run("migrate").returncode == 0
