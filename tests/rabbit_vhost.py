"""Throwaway RabbitMQ virtual hosts for tests and benchmarks (plain helpers, no fixtures).

Each test module gets its own vhost so queues, exchanges and messages never leak between
tests or runs; deleting the vhost removes everything in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from urllib.parse import quote

RABBIT_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))
RABBIT_USER = "guest"
RABBIT_PASSWORD = "guest"


def rabbitmqctl(*args: str) -> str:
    completed = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout


def create_vhost(prefix: str = "test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, RABBIT_USER, ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


def vhost_url(name: str) -> str:
    return (
        f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{RABBIT_HOST}:{RABBIT_PORT}/{quote(name, safe='')}"
    )


def list_queues(vhost: str) -> dict[str, tuple[str, str]]:
    """Queue name -> (type, arguments) as rabbitmqctl reports them."""
    out = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "arguments")
    queues: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            queues[parts[0]] = (parts[1], parts[2])
    return queues


def connection_names(vhost: str) -> list[str]:
    """The client-given names of the vhost's open connections, sorted."""
    listed = json.loads(
        rabbitmqctl("list_connections", "vhost", "client_properties", "--formatter", "json")
    )
    names = []
    for connection in listed:
        if connection["vhost"] != vhost:
            continue
        properties = {key: value for key, _type, value in connection["client_properties"]}
        names.append(str(properties.get("connection_name", "")))
    return sorted(names)


def close_all_connections(vhost: str) -> None:
    rabbitmqctl("close_all_connections", "-p", vhost, "closed by a test")
