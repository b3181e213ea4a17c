"""The Dockerfile, .dockerignore and Procfile, checked statically (no Docker engine here).

The image's HEALTHCHECK program is also run for real against a local HTTP server, because it
is Python code that no linter would otherwise execute.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from birthday_scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAMES = {"DATABASE_URL", "RABBITMQ_URL", "MESSAGE_SERVICE_API_KEY", "API_TOKENS"}
CLI_COMMANDS = {"api", "worker", "scheduler", "all", "message-service", "db migrate"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to (-1 before the first FROM)


def parse_dockerfile(text: str) -> list[Instruction]:
    """A small Dockerfile reader: continuation lines joined, comments dropped, stages counted."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker also ignores comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword}, found {len(found)}"
    return found[0]


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage == -1:
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args


def test_multi_stage_build_with_a_python_311_slim_runtime(
    instructions: list[Instruction],
) -> None:
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: build_args(instructions)[m.group(1)], f.args.split()[0])
        for f in froms
    ]
    assert images[-1] == "python:3.11-slim"
    assert all(image.startswith("python:3.11") for image in images)
    builder_name = froms[0].args.split()[-1]
    builder = [i for i in instructions if i.stage == 0]
    assert any(i.keyword == "RUN" and "pip wheel" in i.args for i in builder)
    copies = [i.args for i in final_stage(instructions) if i.keyword == "COPY"]
    # The runtime takes the finished venv only; sources and build tools stay in the builder.
    assert copies
    assert all(args.startswith(f"--from={builder_name} ") for args in copies)


def test_runtime_runs_as_an_unprivileged_fixed_uid(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the runtime stage must switch away from root"
    uid = users[-1].split(":")[0]
    assert uid == "10001"  # numeric, so Kubernetes runAsNonRoot can verify it
    assert any(i.keyword == "RUN" and "--uid 10001" in i.args for i in final)
    # Nothing after USER switches back.
    last_user = max(n for n, i in enumerate(final) if i.keyword == "USER")
    assert all(i.keyword != "USER" for i in final[last_user + 1 :])


def test_exposes_api_and_metrics_ports(instructions: list[Instruction]) -> None:
    exposed = {
        port for i in final_stage(instructions) if i.keyword == "EXPOSE" for port in i.args.split()
    }
    assert {"8000", "9100"} <= exposed


def test_entrypoint_is_the_console_script_and_defaults_to_the_api(
    instructions: list[Instruction],
) -> None:
    final = final_stage(instructions)
    entrypoint = json.loads(only(final, "ENTRYPOINT").args)  # exec form: signals reach Python
    assert entrypoint == ["birthday-scheduler"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert json.loads(only(final, "CMD").args) == ["api"]
    assert only(final, "STOPSIGNAL").args == "SIGTERM"


def test_no_secret_is_baked_into_the_image(instructions: list[Instruction]) -> None:
    for instruction in instructions:
        if instruction.keyword not in {"ENV", "ARG"}:
            continue
        names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", instruction.args) or [
            instruction.args.split()[0].split("=")[0]
        ]
        for name in names:
            assert name not in SECRET_NAMES, f"{instruction.keyword} {name} bakes a secret in"
            assert not re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", name), name
    # Only the package sources reach the build context: no .env or local database.
    for instruction in instructions:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            sources = instruction.args.split()[:-1]
            assert set(sources) <= {"pyproject.toml", "README.md", "src"}, sources
            assert all((ROOT / source).exists() for source in sources)


def test_runtime_environment_uses_settings_names(instructions: list[Instruction]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    env_names = {
        name
        for i in final_stage(instructions)
        if i.keyword == "ENV"
        for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", i.args)
    }
    app_names = {n for n in env_names if n != "PATH" and not n.startswith("PYTHON")}
    assert app_names <= fields, app_names - fields
    # Containers bind all interfaces; the API then insists on API_TOKENS (see settings).
    assert "HOST=0.0.0.0" in " ".join(i.args for i in final_stage(instructions))


# --- HEALTHCHECK -------------------------------------------------------------------------------


def healthcheck_program(instructions: list[Instruction]) -> str:
    healthcheck = only(final_stage(instructions), "HEALTHCHECK").args
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim has no curl: the probe must be Python"
    assert len(argv) == 3
    program: str = argv[2]
    return program


class _AliveHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/alive" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def alive_server() -> Iterator[tuple[ThreadingHTTPServer, type[_AliveHandler]]]:
    handler = type("Handler", (_AliveHandler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_probe(program: str, port: int, metrics_port: int) -> int:
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    # A proxy configured for the app must not capture the local probe.
    env.update(
        PORT=str(port),
        METRICS_PORT=str(metrics_port),
        http_proxy="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
    )
    return subprocess.run([sys.executable, "-c", program], env=env, timeout=30).returncode


def test_healthcheck_probes_alive_without_curl(instructions: list[Instruction]) -> None:
    program = healthcheck_program(instructions)
    compile(program, "<healthcheck>", "exec")
    assert "/alive" in program
    assert "curl" not in program
    assert "wget" not in program


def test_healthcheck_passes_when_the_api_port_is_alive(
    instructions: list[Instruction],
    alive_server: tuple[ThreadingHTTPServer, type[_AliveHandler]],
) -> None:
    server, _ = alive_server
    assert run_probe(healthcheck_program(instructions), server.server_port, closed_port()) == 0


def test_healthcheck_passes_when_the_metrics_port_is_alive(
    instructions: list[Instruction],
    alive_server: tuple[ThreadingHTTPServer, type[_AliveHandler]],
) -> None:
    server, _ = alive_server  # worker / scheduler: nothing on PORT, /alive on METRICS_PORT
    assert run_probe(healthcheck_program(instructions), closed_port(), server.server_port) == 0


def test_healthcheck_fails_when_alive_is_not_200_or_nothing_listens(
    instructions: list[Instruction],
    alive_server: tuple[ThreadingHTTPServer, type[_AliveHandler]],
) -> None:
    server, handler = alive_server
    program = healthcheck_program(instructions)
    handler.status = 503
    assert run_probe(program, server.server_port, closed_port()) == 1
    assert run_probe(program, closed_port(), closed_port()) == 1


# --- .dockerignore and Procfile ----------------------------------------------------------------


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".venv", "var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests"}
    assert required <= patterns, required - patterns
    assert ".env" in patterns
    # ...but never what the Dockerfile copies in.
    assert not patterns & {"src", "pyproject.toml", "README.md", "*.md", "*", "**"}


def test_procfile_runs_each_process_and_migrates_on_release() -> None:
    processes = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    processes = {name.strip(): command.strip() for name, command in processes.items()}
    assert processes == {
        "release": "birthday-scheduler db migrate",
        "api": "birthday-scheduler api",
        "worker": "birthday-scheduler worker",
        "scheduler": "birthday-scheduler scheduler",
    }
    for command in processes.values():
        assert command.removeprefix("birthday-scheduler ") in CLI_COMMANDS
