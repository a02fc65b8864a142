"""Fixtures for every tier: the infrastructure (a real broker and a real Postgres), settings
isolated per test session, and the three services run as real processes for end-to-end tests.

Infrastructure is taken, in order, from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, from
testcontainers when a Docker engine answers, or started here (Tansu and embedded Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from services.devstack import ServiceProcesses, embedded_postgres, free_port, tansu_broker
from services.settings import Settings
from tests.fake_judge import FakeJudge, serving

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = Path(__file__).parent / "resources"


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    if url := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield url
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with tansu_broker(log_file=tmp_path_factory.mktemp("tansu") / "tansu.log") as url:
            yield url


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        with embedded_postgres(tmp_path_factory.mktemp("pg") / "data") as url:
            yield url


@pytest.fixture(scope="session")
def fake_judge() -> Iterator[FakeJudge]:
    """The LLM judge the session's services call (tests/fake_judge.py), on a local port."""
    fake = FakeJudge()
    with serving(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="session")
def settings(kafka_bootstrap: str, database_url: str, fake_judge: FakeJudge) -> Settings:
    """Settings whose topics, schemas and consumer groups belong to this test session alone,
    so a shared broker or database (given by URL) is never disturbed."""
    tag = uuid.uuid4().hex[:8]
    return make_settings(kafka_bootstrap, database_url, tag, llm_judge={
        "base_url": fake_judge.url, "api_key": "judge-key", "timeout_s": 5.0,
        "backoff_s": 0.01, "backoff_max_s": 0.05})


def make_settings(kafka_bootstrap: str, database_url: str, tag: str, **overrides) -> Settings:
    return Settings(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DATABASE_URL=database_url,
        api_keys=["test-key"], topic_partitions=4,
        topics={"catalog": f"t{tag}.catalog", "traces": f"t{tag}.traces",
                "score_requests": f"t{tag}.score-requests", "scores": f"t{tag}.scores",
                "dead_letter": f"t{tag}.dead-letter"},
        catalog_schema=f"catalog_{tag}", read_model_schema=f"read_model_{tag}",
        dashboard_schema=f"dashboard_{tag}",
        evaluator_group=f"evaluator-{tag}", projections_group=f"projections-{tag}",
        ingest_port=free_port(), query_port=free_port(), metrics_port=free_port(),
        data_dir=f"/tmp/evalstream-{tag}",
        evaluator_plugins=[str(ROOT / "tests/e2e/plugin_evaluators.py")],
        **overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a service process read exactly these settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EVALSTREAM_") and k not in ("KAFKA_BOOTSTRAP_SERVERS",
                                                             "DATABASE_URL")}
    env.update(KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap, DATABASE_URL=settings.dsn,
               EVALSTREAM_API_KEYS=",".join(settings.api_keys),
               EVALSTREAM_TOPIC_PARTITIONS=str(settings.topic_partitions),
               EVALSTREAM_CATALOG_SCHEMA=settings.catalog_schema,
               EVALSTREAM_READ_MODEL_SCHEMA=settings.read_model_schema,
               EVALSTREAM_DASHBOARD_SCHEMA=settings.dashboard_schema,
               EVALSTREAM_EVALUATOR_GROUP=settings.evaluator_group,
               EVALSTREAM_PROJECTIONS_GROUP=settings.projections_group,
               EVALSTREAM_INGEST_PORT=str(settings.ingest_port),
               EVALSTREAM_QUERY_PORT=str(settings.query_port),
               EVALSTREAM_TRACE_URL_TEMPLATE=settings.trace_url_template,
               EVALSTREAM_EVALUATOR_PLUGINS=",".join(settings.evaluator_plugins),
               EVALSTREAM_LOG_LEVEL="WARNING")
    if settings.metrics_port is not None:
        env["EVALSTREAM_METRICS_PORT"] = str(settings.metrics_port)
    for field in type(settings.topics).model_fields:
        env[f"EVALSTREAM_TOPICS__{field.upper()}"] = getattr(settings.topics, field)
    for nested in ("llm_judge", "retry"):
        group = getattr(settings, nested)
        for field in type(group).model_fields:
            value = getattr(group, field)
            if value is not None:
                value = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"EVALSTREAM_{nested.upper()}__{field.upper()}"] = str(value)
    return env


async def evalstream_command(env: dict[str, str], *args: str,
                             timeout: float = 120) -> str:  # noqa: ASYNC109
    """Run `evalstream <args>` as a user does, in a process of its own with `env`; returns what
    it printed, and fails the test (with the end of its stderr) if it exits non-zero."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> Settings:
    from services.database import migrate_all
    from services.messaging import ensure_topics

    await migrate_all(settings)
    await ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
async def db(migrated: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the read-model schema of this session."""
    from services.database import create_pool

    pool = await create_pool(migrated.dsn, migrated.read_model_schema)
    yield pool
    await pool.close()


@contextlib.contextmanager
def running_services(settings: Settings, log_dir: Path) -> Iterator[ServiceProcesses]:
    """The three services as processes reading exactly `settings`, stopped on exit."""
    procs = ServiceProcesses(settings_env(settings), log_dir,
                             ports={"ingest": settings.ingest_port,
                                    "projections": settings.query_port})
    try:
        procs.start_all()
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def services(migrated: Settings, tmp_path_factory) -> Iterator[ServiceProcesses]:
    with running_services(migrated, tmp_path_factory.mktemp("service-logs")) as procs:
        yield procs


class Api:
    """HTTP clients for the running services, with the session's API key."""

    def __init__(self, settings: Settings):
        headers = {"Authorization": f"Bearer {settings.api_keys[0]}"}
        self.ingest = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.ingest_port}",
                                        headers=headers, timeout=30)
        self.query = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.query_port}",
                                       headers=headers, timeout=30)

    async def close(self) -> None:
        await self.ingest.aclose()
        await self.query.aclose()

    async def create(self, path: str, body: object, status: int = 201) -> dict:
        r = await self.ingest.post(path, json=body)
        assert r.status_code == status, r.text
        return r.json()

    async def dataset_with_items(self, items: list[dict], evaluators: list[dict] | None = None,
                                 name: str = "dataset") -> str:
        body: dict = {"name": name}
        if evaluators is not None:
            body["evaluators"] = evaluators
        dataset_id = (await self.create("/v1/datasets", body))["id"]
        await self.create(f"/v1/datasets/{dataset_id}/items", {"items": items})
        return dataset_id

    async def post_traces(self, traces: list[dict]) -> None:
        r = await self.ingest.post("/v1/traces", json={"traces": traces})
        assert r.status_code == 202, r.text

    async def run_with_outputs(self, dataset_id: str, items: list[dict], outputs: list[str],
                               name: str = "r", metadata: dict | None = None) -> str:
        """A new run of the dataset with one succeeded trace per item (`{run id}-{n}`) giving
        that output; its id."""
        run_id = (await self.create("/v1/runs", {"dataset_id": dataset_id, "name": name,
                                                 "metadata": metadata}))["id"]
        await self.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                                 "dataset_item_id": item["id"], "output": out,
                                 "status": "succeeded"}
                                for n, (item, out) in enumerate(zip(items, outputs, strict=True))])
        return run_id

    async def eventually(self, path: str, check, timeout: float = 20.0) -> dict:  # noqa: ASYNC109
        """GET `path` on the query API until `check(body)` holds; returns that body."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = await self.query.get(path)
            if r.status_code == 200:
                last = r.json()
                if check(last):
                    return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} never satisfied the check; last answer: {last}")


@pytest.fixture
async def api(services: ServiceProcesses, migrated: Settings) -> AsyncIterator[Api]:
    client = Api(migrated)
    yield client
    await client.close()
