"""deploy/k8s, checked statically: schema validation (kubernetes-validate, offline), names,
probes, resources from the runbook, security posture and configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from birthday_scheduler.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # bundled with kubernetes-validate: no network needed
CONFIG = "birthday-scheduler-config"
SECRETS = "birthday-scheduler-secrets"
SECRET_KEYS = {"DATABASE_URL", "RABBITMQ_URL", "MESSAGE_SERVICE_API_KEY", "API_TOKENS"}
CONFIG_KEYS = {
    "DATABASE_POOL_MAX",
    "DATABASE_POOL_MIN",
    "WORKER_CONCURRENCY",
    "MESSAGE_SERVICE_URL",
    "MESSAGE_SERVICE_TIMEOUT_MS",
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
    "CIRCUIT_BREAKER_RESET_TIMEOUT_MS",
    "MAX_DELIVERY_ATTEMPTS",
    "SEND_LOCAL_TIME",
    "CATCH_UP_WINDOW_HOURS",
    "ALLOW_UNAUTHENTICATED",
    "HOST",
    "PORT",
    "FORWARDED_ALLOW_IPS",
    "METRICS_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "SCHEDULER_INTERVAL_MS",
    "SHUTDOWN_GRACE_S",
}
# Variables the runbook changes or greps for in the ConfigMap (`kubectl set env`, `grep CIRCUIT`).
RUNBOOK_CONFIG_KEYS = {
    "DATABASE_POOL_MAX",
    "WORKER_CONCURRENCY",
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
    "CIRCUIT_BREAKER_RESET_TIMEOUT_MS",
}
# Runbook, "Vertical Scaling".
RUNBOOK_RESOURCES = {
    "requests": {"memory": "1Gi", "cpu": "500m"},
    "limits": {"memory": "2Gi", "cpu": "1000m"},
}
# Runbook, "Auto-scaling (Kubernetes HPA)", verbatim.
RUNBOOK_HPA: dict[str, Any] = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "birthday-scheduler-api"},
    "spec": {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "birthday-scheduler-api",
        },
        "minReplicas": 3,
        "maxReplicas": 20,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            },
            {
                "type": "Resource",
                "resource": {
                    "name": "memory",
                    "target": {"type": "Utilization", "averageUtilization": 80},
                },
            },
        ],
    },
}
DEPLOYMENT_PORTS = {
    "birthday-scheduler-api": 8000,
    "birthday-scheduler-worker": 9100,
    "birthday-scheduler-scheduler": 9100,
}
EXPECTED = {
    ("ConfigMap", CONFIG),
    ("Secret", SECRETS),
    ("Job", "birthday-scheduler-migrate"),
    ("Deployment", "birthday-scheduler-api"),
    ("Deployment", "birthday-scheduler-worker"),
    ("Deployment", "birthday-scheduler-scheduler"),
    ("Service", "birthday-scheduler-api"),
    ("HorizontalPodAutoscaler", "birthday-scheduler-api"),
    ("PodDisruptionBudget", "birthday-scheduler-api"),
}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    (document,) = load(K8S / "kustomization.yaml")
    return document


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], Doc]:
    result: dict[tuple[str, str], Doc] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in result, f"{key} defined twice"
            result[key] = doc
    return result


def deployments(manifests: dict[tuple[str, str], Doc]) -> list[Doc]:
    return [doc for (kind, _), doc in manifests.items() if kind == "Deployment"]


def the_container(workload: Doc) -> Doc:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    result: Doc = container
    return result


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    result: int = number
    return result


def test_kustomization_lists_every_manifest(kustomization: Doc) -> None:
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)


def test_every_object_is_present(manifests: dict[tuple[str, str], Doc]) -> None:
    assert set(manifests) == EXPECTED


def test_every_document_validates_against_the_kubernetes_schema(
    manifests: dict[tuple[str, str], Doc],
) -> None:
    for key, doc in manifests.items():
        try:
            # strict: unknown fields (a misspelt "readinesProbe") are errors too
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_hpa_is_the_runbooks(manifests: dict[tuple[str, str], Doc]) -> None:
    assert manifests[("HorizontalPodAutoscaler", "birthday-scheduler-api")] == RUNBOOK_HPA


def test_deployments_have_probes_on_their_ports(manifests: dict[tuple[str, str], Doc]) -> None:
    for deployment in deployments(manifests):
        name = deployment["metadata"]["name"]
        container = the_container(deployment)
        expected_port = DEPLOYMENT_PORTS[name]
        assert expected_port in [p["containerPort"] for p in container["ports"]]
        ready = container["readinessProbe"]["httpGet"]
        alive = container["livenessProbe"]["httpGet"]
        assert ready["path"] == "/ready"
        assert alive["path"] == "/alive"
        assert port_number(container, ready["port"]) == expected_port
        assert port_number(container, alive["port"]) == expected_port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(expected_port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_deployments_run_their_subcommand_of_one_image(
    manifests: dict[tuple[str, str], Doc],
) -> None:
    images = set()
    for (kind, name), doc in manifests.items():
        if kind in {"Deployment", "Job"}:
            container = the_container(doc)
            images.add(container["image"])
            assert "command" not in container, "keep the image ENTRYPOINT (birthday-scheduler)"
            expected = {
                "birthday-scheduler-api": ["api"],
                "birthday-scheduler-worker": ["worker"],
                "birthday-scheduler-scheduler": ["scheduler"],
                "birthday-scheduler-migrate": ["db", "migrate"],
            }[name]
            assert container["args"] == expected
    assert len(images) == 1


def test_deployments_use_the_runbook_resources(manifests: dict[tuple[str, str], Doc]) -> None:
    for deployment in deployments(manifests):
        assert the_container(deployment)["resources"] == RUNBOOK_RESOURCES


def test_selectors_match_pod_labels(manifests: dict[tuple[str, str], Doc]) -> None:
    for deployment in deployments(manifests):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    api_labels = manifests[("Deployment", "birthday-scheduler-api")]["spec"]["template"][
        "metadata"
    ]["labels"]
    others = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in deployments(manifests)
        if d["metadata"]["name"] != "birthday-scheduler-api"
    ]
    for selector in (
        manifests[("Service", "birthday-scheduler-api")]["spec"]["selector"],
        manifests[("PodDisruptionBudget", "birthday-scheduler-api")]["spec"]["selector"][
            "matchLabels"
        ],
    ):
        assert selector.items() <= api_labels.items()
        assert all(not selector.items() <= labels.items() for labels in others)


def test_service_maps_port_80_to_the_api(manifests: dict[tuple[str, str], Doc]) -> None:
    (port,) = manifests[("Service", "birthday-scheduler-api")]["spec"]["ports"]
    api = the_container(manifests[("Deployment", "birthday-scheduler-api")])
    assert port["port"] == 80
    assert port_number(api, port["targetPort"]) == 8000


def test_pdb_keeps_api_pods_within_the_hpa_minimum(manifests: dict[tuple[str, str], Doc]) -> None:
    pdb = manifests[("PodDisruptionBudget", "birthday-scheduler-api")]["spec"]
    assert 1 <= pdb["minAvailable"] < RUNBOOK_HPA["spec"]["minReplicas"]


def test_pods_run_unprivileged_on_a_read_only_root(manifests: dict[tuple[str, str], Doc]) -> None:
    for (kind, name), doc in manifests.items():
        if kind not in {"Deployment", "Job"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name  # the image's user
        assert pod["automountServiceAccountToken"] is False, name
        container = the_container(doc)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        volumes = {v["name"]: v for v in pod["volumes"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]], name


def test_termination_grace_outlasts_the_shutdown_grace(
    manifests: dict[tuple[str, str], Doc],
) -> None:
    shutdown_grace = float(manifests[("ConfigMap", CONFIG)]["data"]["SHUTDOWN_GRACE_S"])
    for deployment in deployments(manifests):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > shutdown_grace + 5  # + preStop pause


def test_pods_take_configuration_from_the_configmap_and_secret(
    manifests: dict[tuple[str, str], Doc],
) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for (kind, name), doc in manifests.items():
        if kind not in {"Deployment", "Job"}:
            continue
        container = the_container(doc)
        assert container["envFrom"] == [
            {"configMapRef": {"name": CONFIG}},
            {"secretRef": {"name": SECRETS}},
        ], name
        explicit = {env["name"] for env in container.get("env", [])}
        assert explicit <= fields, name


def test_configmap_and_secret_hold_settings_fields(manifests: dict[tuple[str, str], Doc]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    config = manifests[("ConfigMap", CONFIG)]["data"]
    secret = manifests[("Secret", SECRETS)]
    assert set(config) == CONFIG_KEYS
    assert set(config) >= RUNBOOK_CONFIG_KEYS
    assert set(config) <= fields, set(config) - fields
    assert all(isinstance(value, str) for value in config.values())
    assert "data" not in secret, "placeholders live in stringData, readable and obviously fake"
    assert set(secret["stringData"]) == SECRET_KEYS
    assert fields >= SECRET_KEYS
    assert not set(config) & SECRET_KEYS
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} must be a marked placeholder"


def test_configmap_and_secret_make_a_valid_configuration(
    manifests: dict[tuple[str, str], Doc],
) -> None:
    environ = {
        **manifests[("ConfigMap", CONFIG)]["data"],
        **manifests[("Secret", SECRETS)]["stringData"],
    }
    settings = load_settings(environ)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.metrics_port == 9100
    assert settings.allow_unauthenticated is False
    assert not settings.is_embedded_database
    assert settings.effective_database_url.endswith("/birthday_scheduler")
    settings.require_safe_api_binding()  # tokens set: the API will start on 0.0.0.0


def test_migration_job_runs_once_without_restarts(manifests: dict[tuple[str, str], Doc]) -> None:
    job = manifests[("Job", "birthday-scheduler-migrate")]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 1
