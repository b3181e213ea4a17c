"""docker-compose.yml, checked statically: services, names, wiring and configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from birthday_scheduler.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "api", "worker", "scheduler")
LONG_RUNNING = ("api", "worker", "scheduler")
EXPECTED_SERVICES = {
    *APP_SERVICES,
    "postgres",
    "rabbitmq",
    "message-service",
    "prometheus",
    "grafana",
}
# Every variable the service reads, as the brief lists them.
APP_VARIABLES = {
    "DATABASE_URL",
    "DATABASE_POOL_MAX",
    "DATABASE_POOL_MIN",
    "RABBITMQ_URL",
    "WORKER_CONCURRENCY",
    "MESSAGE_SERVICE_URL",
    "MESSAGE_SERVICE_API_KEY",
    "MESSAGE_SERVICE_TIMEOUT_MS",
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
    "CIRCUIT_BREAKER_RESET_TIMEOUT_MS",
    "MAX_DELIVERY_ATTEMPTS",
    "SEND_LOCAL_TIME",
    "CATCH_UP_WINDOW_HOURS",
    "API_TOKENS",
    "HOST",
    "PORT",
    "FORWARDED_ALLOW_IPS",
    "METRICS_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "SCHEDULER_INTERVAL_MS",
    "SHUTDOWN_GRACE_S",
}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def interpolate(value: str) -> str:
    """Resolve ${NAME:-default} as an unset shell would; a bare ${NAME} has no default."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, (
            f"${{{match.group(1)}}} needs a default so the stack starts without a .env file"
        )
        return match.group(2)

    return _INTERPOLATION.sub(default, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {key: interpolate(str(value)) for key, value in env.items()}


def settings_fields() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * units[unit]
    return total


def test_every_part_of_the_stack_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES


def test_container_names_match_the_runbook(services: dict[str, dict[str, Any]]) -> None:
    # `docker logs -f birthday-scheduler-api --tail=100`
    for name, service in services.items():
        assert service.get("container_name") == f"birthday-scheduler-{name}"


def test_app_services_run_the_image_with_their_subcommand(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {
        "migrate": ["db", "migrate"],
        "api": ["api"],
        "worker": ["worker"],
        "scheduler": ["scheduler"],
        "message-service": ["message-service"],
    }
    images = set()
    for name, command in expected.items():
        service = services[name]
        assert service["command"] == command
        assert service["build"]["context"] == "."
        images.add(service["image"])
    assert len(images) == 1, "one image for every process"


def test_app_environment_uses_only_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    fields = settings_fields()
    for name in (*APP_SERVICES, "message-service"):
        names = set(environment(services[name]))
        assert names <= fields, f"{name}: {sorted(names - fields)} are not Settings fields"
    for name in APP_SERVICES:
        assert set(environment(services[name])) == APP_VARIABLES


def test_app_environment_is_valid_configuration(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        settings = load_settings(environment(services[name]))
        assert settings.host == "0.0.0.0"
        assert settings.metrics_port == 9100
        assert not settings.is_embedded_database
        settings.require_safe_api_binding()  # the API would refuse to start otherwise


def test_app_environment_points_at_the_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment(services["api"])
    database = urlsplit(env["DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert database.hostname == "postgres"
    assert database.path == f"/{postgres['POSTGRES_DB']}" == "/birthday_scheduler"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]

    broker = urlsplit(env["RABBITMQ_URL"])
    rabbitmq = services["rabbitmq"]["environment"]
    assert broker.hostname == "rabbitmq"
    assert broker.port == 5672
    assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]

    simulator = environment(services["message-service"])
    target = urlsplit(env["MESSAGE_SERVICE_URL"])
    assert target.hostname == "message-service"
    assert str(target.port) == simulator["PORT"]
    assert target.path == "/send"
    assert simulator["MESSAGE_SERVICE_API_KEY"] == env["MESSAGE_SERVICE_API_KEY"]


def test_infrastructure_has_healthchecks_and_persistent_volumes(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3.13-management"
    assert "rabbitmq-diagnostics" in " ".join(rabbitmq["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])

    named_volumes = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in named_volumes, f"volume {source} is not declared"


def test_app_services_wait_for_healthy_dependencies_and_the_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in LONG_RUNNING:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"] == {"condition": "service_healthy"}
        assert depends_on["rabbitmq"] == {"condition": "service_healthy"}
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    # Whatever is waited on as healthy must define a healthcheck.
    for service in services.values():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, dict):
            for target, rule in depends_on.items():
                if rule["condition"] == "service_healthy":
                    assert "healthcheck" in services[target], target


def test_app_services_drain_before_being_killed(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        service = services[name]
        grace = float(environment(service)["SHUTDOWN_GRACE_S"])
        assert seconds(service["stop_grace_period"]) > grace
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
    assert services["api"]["ports"] == ["8000:8000"]


def test_rabbitmq_enables_the_prometheus_plugin(services: dict[str, dict[str, Any]]) -> None:
    mounts = {
        target: source
        for source, target, *_ in (v.split(":") for v in services["rabbitmq"]["volumes"])
    }
    source = mounts["/etc/rabbitmq/enabled_plugins"]
    text = (ROOT / source).read_text().strip()
    assert re.fullmatch(r"\[[a-z_]+(,[a-z_]+)*\]\.", text), "an Erlang list term ending in '.'"
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(text[1:-2].split(","))


def test_monitoring_mounts_the_repository_configuration(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    # Every bind mount in the file points at something that exists in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
