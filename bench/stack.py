"""The system under test: broker and Postgres (started here unless KAFKA_BOOTSTRAP_SERVERS /
DATABASE_URL name them), settings unique to one bench run, the services as processes, and the
process ids the resource sampler watches."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
import psutil

from services.devstack import ServiceProcesses, embedded_postgres, free_port, tansu_broker
from services.settings import Settings

API_KEY = "bench-key"


def _own_names(tag: str) -> dict[str, str]:
    """A name of this bench run for every schema and consumer group setting (whatever fields
    Settings has today: catalog, read model, dashboard… schemas; evaluator, projections groups)."""
    names = {}
    for field in Settings.model_fields:
        if field.endswith("_schema"):
            names[field] = f"bench_{field.removesuffix('_schema')}_{tag}"
        elif field.endswith("_group"):
            names[field] = f"bench-{field.removesuffix('_group')}-{tag}"
    return names


def bench_settings(bootstrap: str, dsn: str, tag: str, work_dir: Path) -> Settings:
    """Topics, schemas and consumer groups of this bench run alone, so a broker or database given
    by URL is never disturbed. Every other EVALSTREAM_* variable (batch sizes, partitions…)
    is taken from the environment, so the benchmark measures the configuration in force."""
    prefix = f"bench{tag}"
    return Settings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, DATABASE_URL=dsn, api_keys=[API_KEY],
        topics={"catalog": f"{prefix}.catalog", "traces": f"{prefix}.traces",
                "score_requests": f"{prefix}.score-requests", "scores": f"{prefix}.scores",
                "dead_letter": f"{prefix}.dead-letter"},
        ingest_port=free_port(), query_port=free_port(), data_dir=str(work_dir),
        **_own_names(tag))


def service_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment that makes a service process read exactly these settings."""
    env = dict(os.environ)
    # Several evaluators run at once in the scale-out phase; they cannot share one metrics port,
    # and the benchmark reads the processes' CPU and memory itself.
    env.pop("EVALSTREAM_METRICS_PORT", None)
    env.update(KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap, DATABASE_URL=settings.dsn,
               EVALSTREAM_API_KEYS=",".join(settings.api_keys),
               EVALSTREAM_INGEST_PORT=str(settings.ingest_port),
               EVALSTREAM_QUERY_PORT=str(settings.query_port),
               EVALSTREAM_DATA_DIR=settings.data_dir)
    for field in Settings.model_fields:
        if field.endswith(("_schema", "_group")):
            env[f"EVALSTREAM_{field.upper()}"] = getattr(settings, field)
    env.setdefault("EVALSTREAM_LOG_LEVEL", "WARNING")
    for field in type(settings.topics).model_fields:
        env[f"EVALSTREAM_TOPICS__{field.upper()}"] = getattr(settings.topics, field)
    env.update(overrides)
    return env


def _listener_pid(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                and conn.pid:
            return conn.pid
    return None


def _is_local(host: str) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


class Stack:
    """Broker, Postgres and services of one bench run; `close()` stops what it started and drops
    the topics and schemas it created (unless `keep`)."""

    def __init__(self, *, keep: bool = False):
        self.tag = uuid.uuid4().hex[:8]
        self.keep = keep
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"evalstream-bench-{self.tag}-"))
        self.log_dir = self.work_dir / "logs"
        self.log_dir.mkdir()
        self._exit = contextlib.ExitStack()
        self.started_broker = self.started_postgres = False
        self.settings: Settings | None = None
        self.env: dict[str, str] = {}
        # One ServiceProcesses per distinct environment: a second projections instance needs a
        # query port of its own.
        self.groups: dict[str, ServiceProcesses] = {}

    # -- infrastructure -------------------------------------------------------------------------

    def start_infrastructure(self) -> Settings:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            bootstrap = self._exit.enter_context(
                tansu_broker(log_file=self.log_dir / "tansu.log"))
            self.started_broker = True
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            dsn = self._exit.enter_context(embedded_postgres(self.work_dir / "postgres"))
            self.started_postgres = True
        self.settings = bench_settings(bootstrap, dsn, self.tag, self.work_dir)
        self.env = service_env(self.settings)
        return self.settings

    async def migrate(self) -> None:
        from services.database import migrate_all
        from services.messaging import ensure_topics

        await migrate_all(self.settings)
        await ensure_topics(self.settings)

    def broker_pid(self) -> int | None:
        host, _, port = self.settings.bootstrap.split(",")[0].rpartition(":")
        return _listener_pid(int(port)) if _is_local(host) else None

    async def postgres_pid(self) -> int | None:
        """The postmaster, found as the parent of one of our backends (local servers only)."""
        conn = await asyncpg.connect(self.settings.dsn)
        try:
            # inet_server_addr() is NULL over a Unix socket, which is local by definition.
            backend, addr = await conn.fetchrow("SELECT pg_backend_pid(), inet_server_addr()")
            if addr is not None and not _is_local(str(addr)):
                return None
            # Looked up while the backend still exists, i.e. before the connection closes.
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(backend).parent()
                if parent is not None and "postgres" in parent.name():
                    return parent.pid
            return None
        finally:
            await conn.close()

    # -- services -------------------------------------------------------------------------------

    def start_services(self) -> None:
        main = ServiceProcesses(self.env, self.log_dir,
                                ports={"ingest": self.settings.ingest_port,
                                       "projections": self.settings.query_port})
        self.groups["main"] = main
        main.start_all()

    def add_instance(self, name: str, instance: str) -> None:
        """Another process of `name` in the same consumer group (scale-out)."""
        overrides, ports = {}, {}
        if name == "projections":
            port = free_port()
            overrides["EVALSTREAM_QUERY_PORT"] = str(port)
            ports["projections"] = port
        group = ServiceProcesses(service_env(self.settings, **overrides), self.log_dir, ports)
        group.start(name, instance=instance)
        self.groups[instance] = group

    def stop_instance(self, instance: str) -> None:
        group = self.groups.pop(instance)
        group.stop_all()

    async def wait_group_stable(self, group: str, members: int, within: float = 60.0) -> float:
        """Wait until the consumer group has `members` members and has finished rebalancing;
        returns the seconds waited (a broker without DescribeGroups gets a fixed pause)."""
        from aiokafka.admin import AIOKafkaAdminClient

        loop = asyncio.get_running_loop()
        started = loop.time()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
        await admin.start()
        try:
            while loop.time() - started < within:
                try:
                    response = await admin.describe_consumer_groups([group])
                    # (error_code, group, state, protocol_type, protocol, members)
                    _, _, state, _, _, joined = response[0].groups[0]
                except Exception:  # a broker without DescribeGroups: fall back to a pause
                    await asyncio.sleep(8)
                    break
                if state == "Stable" and len(joined) == members:
                    break
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        return loop.time() - started

    def service_pids(self) -> dict[str, int]:
        return {key: proc.pid for group in self.groups.values()
                for key, proc in group.procs.items()}

    def exited(self) -> list[str]:
        return [key for group in self.groups.values() for key in group.exited()]

    def log_tail(self, key: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{key}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_services(self) -> None:
        for instance in list(self.groups):
            self.stop_instance(instance)

    # -- teardown -------------------------------------------------------------------------------

    async def _drop_own_data(self) -> None:
        """On a broker or database given by URL, remove this run's topics and schemas."""
        s = self.settings
        if not self.started_postgres:
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(s.dsn)
                try:
                    # Every schema of this run: catalog, read model (and its rebuilt copies),
                    # baseline and the stage-alone scratch schema all carry the tag.
                    for schema in await conn.fetch(
                            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                            f"bench\\_%{self.tag}%"):
                        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema[0]}" CASCADE')
                    with contextlib.suppress(asyncpg.PostgresError):
                        await conn.execute("DELETE FROM evalstream.read_models WHERE name = $1",
                                           s.read_model_schema)
                finally:
                    await conn.close()
        if not self.started_broker:
            from aiokafka.admin import AIOKafkaAdminClient

            with contextlib.suppress(Exception):
                admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
                await admin.start()
                try:
                    await admin.delete_topics(s.topics.all())
                finally:
                    await admin.close()

    def close(self, *, keep_logs: bool = False) -> None:
        """Stop everything; with `keep_logs` (a failed run) the service logs stay for reading."""
        self.stop_services()
        if self.settings is not None and not self.keep:
            asyncio.run(self._drop_own_data())
        self._exit.close()
        if self.keep:
            return
        if keep_logs:
            shutil.rmtree(self.work_dir / "postgres", ignore_errors=True)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
