"""docker-compose.yml and the Dockerfile keep the facts production depends on: one image running
`evalstream serve <service>`, start order behind `migrate`, healthchecks that work, and only
environment variables that Settings actually reads (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from pydantic import AliasChoices, BaseModel

from services.cli import Service
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = [s.value for s in Service]  # what `evalstream serve` accepts
HTTP_PORTS = {"ingest": ("EVALSTREAM_INGEST_PORT", 8000),
              "projections": ("EVALSTREAM_QUERY_PORT", 8001)}
SHELL = {"EVALSTREAM_API_KEYS": "key-one,key-two"}  # what an operator exports before `up`

_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: object, shell: dict[str, str]) -> object:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` over every string of the file."""
    if isinstance(value, dict):
        return {k: _interpolate(v, shell) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, shell) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"] or "", m["arg"] or ""
        have = shell.get(name)
        unset = have is None or (have == "" and op.startswith(":"))
        if op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        return have or ""

    return _VAR.sub(one, value)


def _raw() -> dict:
    # PyYAML resolves the `<<` merge keys the way compose does.
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _interpolate(_raw(), SHELL)


def _env(service: dict) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in service.get("environment", {}).items()}


def _settings_env_names() -> set[str]:
    """Every environment variable name Settings reads (prefix, aliases, nested `__` fields)."""
    names: set[str] = set()
    prefix = Settings.model_config["env_prefix"]
    for field_name, field in Settings.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(c) for c in field.validation_alias.choices)
            continue
        names.add(f"{prefix}{field_name}".upper())
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(f"{prefix}{field_name}__{sub}".upper() for sub in kind.model_fields)
    return names


def _evalstream_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items()
            if s.get("command", [None])[0] == "evalstream"}


def test_each_service_runs_evalstream_serve_from_the_one_build(compose):
    services = compose["services"]
    for name in SERVICES:
        assert services[name]["command"] == ["evalstream", "serve", name], name
    assert services["migrate"]["command"] == ["evalstream", "migrate"]

    ours = _evalstream_services(compose)
    assert set(ours) == {*SERVICES, "migrate"}
    assert {s["build"]["context"] for s in ours.values()} == {"."}
    assert {s["build"].get("dockerfile", "Dockerfile") for s in ours.values()} == {"Dockerfile"}
    # One image name: compose builds it once and every container runs the same code.
    assert len({s["image"] for s in ours.values()}) == 1


def test_services_start_after_migrate_and_healthy_infrastructure(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"}, "postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in SERVICES:
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["kafka"] == {"condition": "service_healthy"}, name
        if "DATABASE_URL" in _env(services[name]):
            assert deps["postgres"] == {"condition": "service_healthy"}, name
    assert "DATABASE_URL" in _env(services["ingest"])
    assert "DATABASE_URL" in _env(services["projections"])


def test_infrastructure_has_healthchecks_and_named_volumes(compose):
    kafka, postgres = compose["services"]["kafka"], compose["services"]["postgres"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    kenv = _env(kafka)
    assert kenv["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kenv["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert "CLUSTER_ID" in kenv
    assert kenv["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kenv["KAFKA_LOG_RETENTION_MS"] == "-1"  # the log is the source of truth
    assert postgres["image"].startswith("postgres:16")
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    for svc, target in ((kafka, "/var/lib/kafka/data"), (postgres, "/var/lib/postgresql/data")):
        source, path = svc["volumes"][0].split(":")
        assert path == target and source in compose["volumes"]
    # Every service reaches the broker and database by the names compose gives them.
    for name, svc in _evalstream_services(compose).items():
        env = _env(svc)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        if "DATABASE_URL" in env:
            assert re.fullmatch(r"postgresql://evalstream:[^@]+@postgres:5432/evalstream",
                                env["DATABASE_URL"]), name


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _run_check(test: list[str], port: int) -> int:
    assert test[0] == "CMD" and test[1] == "python", test
    # The check names the container's port; aim it at this test's server instead.
    args = [re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{port}/", a) for a in test[2:]]
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("name", list(HTTP_PORTS))
def test_http_healthcheck_passes_on_200_and_fails_otherwise(compose, name):
    svc = compose["services"][name]
    var, port = HTTP_PORTS[name]
    env = _env(svc)
    assert env[var] == str(port) and env["EVALSTREAM_HOST"] == "0.0.0.0"
    assert str(port) in [str(p) for p in svc["expose"]]
    test = svc["healthcheck"]["test"]
    assert f"http://127.0.0.1:{port}/healthz" in test[-1]

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        free = server.server_address[1]
        assert _run_check(test, free) == 0
        _Healthz.status = 500
        assert _run_check(test, free) != 0
    finally:
        _Healthz.status = 200
        server.shutdown()
        server.server_close()
    assert _run_check(test, free) != 0  # nothing listening


def test_evaluator_health_is_documented_where_it_has_no_healthcheck(compose):
    evaluator = compose["services"]["evaluator"]
    if "healthcheck" in evaluator:
        return
    assert "docs/production.md" in evaluator["x-health"]
    assert "evalstream-evaluator" in evaluator["x-health"]
    assert Settings().evaluator_group == "evalstream-evaluator"
    docs = (ROOT / "docs" / "production.md").read_text()
    assert "kafka-consumer-groups.sh" in docs and "--group evalstream-evaluator" in docs


def test_the_gateway_publishes_both_apis_and_the_services_can_scale(compose):
    services = compose["services"]
    gateway = services["gateway"]
    assert sorted(gateway["ports"]) == ["8000:8000", "8001:8001"]
    assert gateway["depends_on"] == {"ingest": {"condition": "service_healthy"},
                                     "projections": {"condition": "service_healthy"}}
    caddyfile = compose["configs"][gateway["configs"][0]["source"]]["content"]
    sites = dict(re.findall(r"^:(\d+) \{(.*?)^\}", caddyfile, re.MULTILINE | re.DOTALL))
    routes = {port: re.search(r"reverse_proxy \{\s*dynamic a (\w+ \d+)", site).group(1)
              for port, site in sites.items()}
    assert routes == {"8000": "ingest 8000", "8001": "projections 8001"}
    # Metrics are for the scraper inside the network: the gateway answers 404 before proxying.
    for port, site in sites.items():
        assert site.index("respond /metrics 404") < site.index("reverse_proxy"), port
    for name, svc in _evalstream_services(compose).items():
        # A fixed host port or container name would stop a second replica from starting.
        assert "ports" not in svc and "container_name" not in svc, name
    for name in ("evaluator", "projections"):
        assert services[name]["deploy"]["replicas"] >= 1, name


def test_api_keys_are_required_from_the_operator():
    for name in HTTP_PORTS:
        raw = _raw()["services"][name]["environment"]["EVALSTREAM_API_KEYS"]
        assert re.fullmatch(r"\$\{EVALSTREAM_API_KEYS:\?.+\}", raw), raw
    with pytest.raises(KeyError, match="EVALSTREAM_API_KEYS"):
        _interpolate(_raw(), {})


def test_every_environment_variable_is_read_by_settings(compose, monkeypatch):
    known = _settings_env_names()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "EVALSTREAM_API_KEYS"} <= known
    for name, svc in _evalstream_services(compose).items():
        env = _env(svc)
        assert set(env) <= known, (name, set(env) - known)
        # …and Settings accepts the values, as the container would read them.
        for var in list(os.environ):
            if var.startswith("EVALSTREAM_") or var in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
                monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        assert settings.bootstrap == "kafka:9092"
        assert settings.topic_partitions == 12
        if name in HTTP_PORTS:
            assert settings.api_keys == ["key-one", "key-two"]
            assert settings.host == "0.0.0.0"
            assert settings.dsn.startswith("postgresql://evalstream:")


def test_dockerfile_installs_the_project_and_runs_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert stages and all(s == "python:3.11-slim" for s in stages)
    for needed in ("pyproject.toml", "README.md", "schemas", "services"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", dockerfile, re.MULTILINE), needed
    assert re.search(r"pip install \.$", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.rstrip().splitlines()[-1] == 'CMD ["evalstream", "--help"]'
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & {"pyproject.toml", "README.md", "schemas", "services", "*.md"}


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


def test_docker_compose_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin here (the file is checked structurally above)")
    result = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, **SHELL})
    assert result.returncode == 0, result.stderr
