"""deploy/k8s/: the overlays render, and every object refers only to what the project has.

Rendering: tests/integration/deploy/kustomize_lite.py (the subset of kustomize the manifests
use; anything else is refused), compared with the real ``kustomize build`` / ``kubectl
kustomize`` wherever one is installed. Cross-checks: MLLM_MONITOR_* variables against the
settings model, the ConfigMap's TOML loaded through monitor.config.load_settings (with the
containers' environment), probe and scrape paths against the app's routes, ports against
[server] port, CLI invocations against the CLI, volumes and Secret keys against what exists.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.deploy.deploy_files import document
from tests.integration.deploy.kustomize_lite import (
    UnsupportedKustomizationError,
    build,
    containers,
    key,
    kustomize_binary,
    pod_spec,
)
from tests.integration.deploy.project_facts import (
    DEPLOY,
    SECRET_STANDINS,
    assert_settings_variables,
    cli_command,
    daemon_app,
    load_with_environment,
    relay_app,
    route_exists,
)
from tests.support.scripts import load_script

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
MONITOR_IMAGE = "registry.example.com/mllm-monitor"
CONFIG_FILE = "mllm-monitor.toml"  # the ConfigMap key, and the file MLLM_MONITOR_CONFIG names


def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay.name: build(overlay) for overlay in OVERLAYS}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def monitor_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in containers(objects) if c["image"].startswith(MONITOR_IMAGE)]


def is_relay(container: dict[str, Any]) -> bool:
    """The sidecar overlay's container: ``mllm-monitor relay`` (no database, no encoders)."""
    return bool(container.get("args") == ["relay"])


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment, Secret references replaced by stand-in values."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secret_keys(), f"{item['name']}: no key {ref['key']!r}"
            env[item["name"]] = SECRET_STANDINS[item["name"]]
    return env


def secret_keys() -> set[str]:
    """Keys of the Secret the workloads read (documented in secret.example.yaml)."""
    secret = document(K8S / "base" / "secret.example.yaml")
    return set(secret["stringData"])


def config_toml(objects: list[dict[str, Any]]) -> str:
    (config_map,) = [o for o in by_kind(objects, "ConfigMap") if CONFIG_FILE in o["data"]]
    text: str = config_map["data"][CONFIG_FILE]
    return text


def test_there_are_the_three_overlays() -> None:
    assert {overlay.name for overlay in OVERLAYS} == {"autoscaling", "sidecar", "standalone"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_the_whole_deployment(overlay: Path) -> None:
    objects = build(overlay)
    kinds = {obj["kind"] for obj in objects}
    assert kinds >= {
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Job",
        "ServiceMonitor",
        "PrometheusRule",
        "Deployment",
    }
    assert len({key(obj) for obj in objects}) == len(objects), "duplicate objects"
    namespaces = {obj["metadata"].get("namespace") for obj in objects}
    assert len(namespaces) == 1 and None not in namespaces
    # The images transformer reached every monitor container (none left on the bare name).
    images = {c["image"] for c in containers(objects)}
    assert "mllm-monitor" not in images
    assert any(image.startswith(MONITOR_IMAGE + ":") for image in images)


def test_rendering_agrees_with_kustomize_where_installed(tmp_path: Path) -> None:
    """Where a kustomize binary exists (kubectl kustomize here), its output is the same set of
    objects; everywhere, the renderer refuses kustomize features it does not implement."""
    command = kustomize_binary()
    if command is not None:
        for overlay in OVERLAYS:
            result = subprocess.run(
                [*command, str(overlay)], capture_output=True, text=True, timeout=120, check=False
            )
            assert result.returncode == 0, result.stderr
            real = {key(o): o for o in yaml.safe_load_all(result.stdout) if o}
            ours = {key(o): o for o in build(overlay)}
            assert ours == real, overlay.name
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(UnsupportedKustomizationError, match="commonLabels"):
        build(tmp_path)


def test_prometheusrule_holds_exactly_the_alert_rules() -> None:
    alerts = document("prometheus/alerts.yml")
    rule = document(K8S / "base" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == alerts["groups"]
    # And the file is what the generator writes now (it was regenerated after the last edit).
    generator = load_script(K8S / "generate_prometheusrule.py")
    assert generator.render() == (K8S / "base" / "prometheusrule.yaml").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_environment_variables_are_settings(overlay: Path) -> None:
    objects = build(overlay)
    for container in monitor_containers(objects):
        names = {item["name"] for item in container.get("env", [])}
        monitor_names = {n for n in names if n.startswith("MLLM_MONITOR_")}
        assert monitor_names, container["name"]
        assert_settings_variables(monitor_names, f"{overlay.name}/{container['name']}")
        assert names - monitor_names <= {"HF_HUB_OFFLINE"}, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_config_loads_with_each_container_environment(overlay: Path, tmp_path: Path) -> None:
    objects = build(overlay)
    config = tmp_path / CONFIG_FILE
    config.write_text(config_toml(objects))
    assert tomllib.loads(config.read_text())  # plain TOML first
    for container in monitor_containers(objects):
        settings = load_with_environment(config, container_env(container, objects))
        assert settings.server.host == "0.0.0.0" and settings.server.token
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        # The image reads /etc/mllm-monitor/mllm-monitor.toml (MLLM_MONITOR_CONFIG).
        assert mounts["/etc/mllm-monitor"]["readOnly"] is True
        if is_relay(container):
            assert settings.proxy.upstream == "http://127.0.0.1:8000"
            assert settings.relay.central_url.startswith("http://mllm-monitor.")
            assert settings.relay.token, "the central records API wants its token"
            spool = settings.relay.spool_dir
            assert spool is not None
            assert any(
                spool.is_relative_to(path) and not mount.get("readOnly")
                for path, mount in mounts.items()
            ), "the spool is on a writable volume"
            continue
        assert settings.database.url.startswith("postgresql+psycopg://"), "replicas need PG"
        if container["name"] == "mllm-monitor":  # the serving container
            assert mounts[str(settings.reference.root)]["readOnly"] is True
            assert mounts["/var/cache/huggingface"]["readOnly"] is True
            assert settings.encoders.local_files_only, "read-only model cache: no downloads"
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"http": settings.server.port}
            if overlay.name == "sidecar":
                assert settings.proxy.upstream == "http://127.0.0.1:8000"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_probes_and_scrapes_hit_routes_the_app_serves(overlay: Path, tmp_path: Path) -> None:
    objects = build(overlay)
    paths: list[tuple[str, str]] = []
    for container in monitor_containers(objects):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] == "http"
                paths.append((probe, container[probe]["httpGet"]["path"]))
    (monitor,) = [c for c in monitor_containers(objects) if c["name"] == "mllm-monitor"]
    assert monitor["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert monitor["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (service_monitor,) = by_kind(objects, "ServiceMonitor")
    for endpoint in service_monitor["spec"]["endpoints"]:
        paths.append(("scrape", endpoint["path"]))
    serving = relay_app() if is_relay(monitor) else daemon_app(tmp_path)
    with serving as client:
        for what, path in paths:
            assert route_exists(client, "GET", path), f"{what}: no GET {path}"
        assert route_exists(client, "POST", "/v1/chat/completions")


def test_the_sidecar_runs_the_thin_relay_with_small_requests() -> None:
    """The sidecar overlay's monitor container is ``mllm-monitor relay`` (the standalone
    replicas embed and compute), with requests fit for ~72 MiB resident, and no database."""
    objects = build(K8S / "overlays" / "sidecar")
    (relay,) = [c for c in monitor_containers(objects) if c["name"] == "mllm-monitor"]
    assert relay["args"] == ["relay"]
    requests = relay["resources"]["requests"]
    assert _mebibytes(requests["memory"]) <= 128
    assert _millicores(requests["cpu"]) <= 100
    assert _mebibytes(relay["resources"]["limits"]["memory"]) <= 512
    env = {item["name"] for item in relay["env"]}
    assert "MLLM_MONITOR_DATABASE__URL" not in env
    assert all(c["name"] != "wait-for-schema" for c in containers(objects))


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0, "Ki": 1 / 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_service_ports_and_selectors_reach_the_monitor(overlay: Path) -> None:
    objects = build(overlay)
    (service,) = by_kind(objects, "Service")
    (service_monitor,) = by_kind(objects, "ServiceMonitor")
    (policy,) = by_kind(objects, "NetworkPolicy")
    (deployment,) = by_kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    settings_port = tomllib.loads(config_toml(objects))["server"]["port"]
    (monitor,) = [c for c in monitor_containers(objects) if c["name"] == "mllm-monitor"]
    named = {p["name"]: p["containerPort"] for p in monitor["ports"]}
    for port in service["spec"]["ports"]:
        assert named[port["targetPort"]] == settings_port
    assert {p["name"] for p in service["spec"]["ports"]} >= {
        e["port"] for e in service_monitor["spec"]["endpoints"]
    }
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [
        settings_port
    ]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_volumes_config_maps_and_claims_exist(overlay: Path) -> None:
    objects = build(overlay)
    names = {key(obj) for obj in objects}
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']}: {mount['name']}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_commands_are_cli_commands(overlay: Path) -> None:
    """The Job runs `db upgrade`, the init container waits on `db current`, the workload
    serves; each is a command of this CLI with these options."""
    objects = build(overlay)
    (job,) = by_kind(objects, "Job")
    (upgrade,) = job["spec"]["template"]["spec"]["containers"]
    assert upgrade["args"] == ["db", "upgrade"]
    cli_command(upgrade["args"])
    seen = set()
    for container in monitor_containers(objects):
        if "args" in container:
            cli_command(container["args"])
            seen.add(tuple(container["args"]))
        if "command" in container:
            script = container["command"][-1]
            assert "mllm-monitor db current" in script
            cli_command(["db", "current"])
            seen.add(("db", "current"))
    if overlay.name == "sidecar":  # the relay: no database, so no schema to wait for
        assert seen >= {("relay",), ("db", "upgrade")}
    else:
        assert seen >= {("serve",), ("db", "upgrade"), ("db", "current")}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_containers_run_unprivileged_with_resources(overlay: Path) -> None:
    objects = build(overlay)
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        # The Service mllm-monitor would otherwise put MLLM_MONITOR_* service links in the env.
        assert spec["enableServiceLinks"] is False, key(obj)
        for container in spec.get("initContainers", []) + spec["containers"]:
            if not container["image"].startswith(MONITOR_IMAGE):
                continue
            security = {**spec.get("securityContext", {}), **container["securityContext"]}
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            resources = container["resources"]
            assert resources["requests"]["memory"] and resources["limits"]["memory"]


# -- autoscaling (KEDA) ---------------------------------------------------------------------

METRIC_IN_QUERY = re.compile(r"\b(mllm_monitor_[a-z_]+)(\{[^}]*\})?")


def scaled_object() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    objects = build(K8S / "overlays" / "autoscaling")
    (scaler,) = by_kind(objects, "ScaledObject")
    return scaler, objects


def test_the_scaled_object_scales_the_rendered_deployment_within_its_budget() -> None:
    scaler, objects = scaled_object()
    spec = scaler["spec"]
    (deployment,) = by_kind(objects, "Deployment")
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaler["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    # Never fewer replicas than the Deployment asks for, nor so few that the budget blocks drains.
    assert spec["minReplicaCount"] >= deployment["spec"]["replicas"]
    assert spec["minReplicaCount"] > budget["spec"]["minAvailable"]
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    assert {t["name"] for t in spec["triggers"]} == {"intake", "inbox-depth"}


def test_the_triggers_query_series_the_monitor_exposes_as_prometheus_scrapes_them() -> None:
    from prometheus_client import CollectorRegistry

    from monitor.metrics import RECORD_OUTCOMES, MonitorMetrics, metric_names

    scaler, objects = scaled_object()
    exposed = set(metric_names(MonitorMetrics(CollectorRegistry(), ["default"]).registry))
    (service,) = by_kind(objects, "Service")
    namespace = scaler["metadata"]["namespace"]
    for trigger in scaler["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert float(meta["threshold"]) > 0
        found = METRIC_IN_QUERY.findall(meta["query"])
        assert found, meta["query"]
        for name, selector in found:
            assert name in exposed, f"{trigger['name']}: no metric {name}"
            labels = dict(re.findall(r'(\w+)="([^"]*)"', selector))
            # The ServiceMonitor's job label is the Service's name; the namespace the overlay's.
            assert labels.get("job") == service["metadata"]["name"]
            assert labels.get("namespace") == namespace
            assert labels.get("outcome", "sampled") in RECORD_OUTCOMES


def test_the_trigger_queries_are_valid_promql(tmp_path: Path) -> None:
    from tests.integration.deploy.prometheus_server import tool_path

    scaler, _ = scaled_object()
    rules = {
        "groups": [
            {
                "name": "keda-triggers",
                "rules": [
                    {
                        "record": f"keda:{t['name'].replace('-', '_')}",
                        "expr": t["metadata"]["query"],
                    }
                    for t in scaler["spec"]["triggers"]
                ],
            }
        ]
    }
    path = tmp_path / "triggers.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [tool_path("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
