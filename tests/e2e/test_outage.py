"""The projections while their Postgres is unreachable: they back off instead of taking the same
batch again at once (which kept a core busy and wrote thousands of tracebacks a second), and
apply everything once it is back. The outage is a TCP proxy in front of the session's Postgres
that drops every connection and refuses new ones."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest

from services.devstack import ServiceProcesses
from tests.conftest import Api, make_settings, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


class PostgresProxy:
    """Forwards TCP connections on 127.0.0.1 to Postgres (over TCP or its Unix socket), from a
    thread of its own, so the services' connections are served while the test blocks. `cut()`
    drops every connection and refuses new ones; `restore()` accepts them again."""

    def __init__(self, dsn: str):
        parts = urlsplit(dsn)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        port = parts.port or 5432
        self.target = ({"path": f"{host}/.s.PGSQL.{port}"} if host.startswith("/")
                       else {"host": host, "port": port})
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    def url(self) -> str:
        """`dsn` through the proxy."""
        parts = urlsplit(self.dsn)
        user = parts.username or "postgres"
        auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
        query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "host")
        return urlunsplit(("postgresql", f"{auth}127.0.0.1:{self.port}", parts.path or "/postgres",
                           query, ""))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self.thread.start()
        self.restore()

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._cut())

    def stop(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if "path" in self.target:
                up_reader, up_writer = await asyncio.open_unix_connection(self.target["path"])
            else:
                up_reader, up_writer = await asyncio.open_connection(**self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


@pytest.fixture
async def own_settings(kafka_bootstrap: str, database_url: str):
    from services.database import migrate_all
    from services.messaging import ensure_topics

    settings = make_settings(kafka_bootstrap, database_url, uuid.uuid4().hex[:8],
                             retry={"backoff_s": 0.1, "backoff_max_s": 0.5})
    await migrate_all(settings)
    await ensure_topics(settings)
    return settings


@pytest.fixture
def proxy(database_url: str) -> Iterator[PostgresProxy]:
    p = PostgresProxy(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    p.start()
    yield p
    p.stop()


async def test_projections_back_off_while_postgres_is_down_and_catch_up(
        own_settings, proxy, tmp_path):
    env = settings_env(own_settings)
    direct = ServiceProcesses(env, tmp_path, ports={"ingest": own_settings.ingest_port})
    # Only the projections reach Postgres through the proxy.
    proxied = ServiceProcesses({**env, "DATABASE_URL": proxy.url(), "EVALSTREAM_LOG_LEVEL": "INFO"},
                               tmp_path, ports={"projections": own_settings.query_port})
    api = Api(own_settings)
    try:
        direct.start("ingest")
        direct.start("evaluator")
        proxied.start("projections")
        dataset_id = await api.dataset_with_items(
            [{"id": f"i{n}", "expected_output": "Paris"} for n in range(4)])
        run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]

        def traces(numbers):
            return [{"trace_id": f"{run_id}-{n}", "run_id": run_id, "dataset_item_id": f"i{n}",
                     "output": "Paris" if n % 2 == 0 else "Rome", "status": "succeeded"}
                    for n in numbers]

        await api.post_traces(traces([0, 1]))
        await api.eventually(f"/v1/runs/{run_id}",
                             lambda s: s["scores"].get("exact_match", {}).get("count") == 2)

        proxy.cut()
        await api.post_traces(traces([2, 3]))  # ingest has its own way to Postgres
        await asyncio.sleep(3)  # the projections try, and wait longer each time
        log = (tmp_path / "projections.log").read_text()
        # Without backoff: the batch again at once, a traceback each time, thousands of them.
        assert log.count("Traceback") < 10, log[-3000:]
        # With it: 0.1 s doubling to 0.5 s, about 8 attempts in 3 s, one warning each.
        attempts = log.count("applying a batch failed (attempt ")
        assert 1 <= attempts < 40, log[-3000:]

        # The query API reads through the proxy too: a 503 naming Postgres, not a bare 500.
        r = await api.query.get(f"/v1/runs/{run_id}")
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["detail"][0]["msg"].startswith("Postgres is unreachable")

        proxy.restore()
        # The traces and their scores come back on two topics, in either order: both awaited.
        summary = await api.eventually(
            f"/v1/runs/{run_id}", lambda s: s["scores"].get("exact_match", {}).get("count") == 4
            and s["completed_items"] == 4)
        assert summary["scores"]["exact_match"]["average"] == 0.5
        assert "applying a batch succeeded at attempt" in (tmp_path / "projections.log").read_text()
    finally:
        await api.close()
        proxied.stop_all()
        direct.stop_all()


async def test_ingest_answers_503_naming_postgres_while_it_is_down(own_settings, proxy, tmp_path):
    procs = ServiceProcesses({**settings_env(own_settings), "DATABASE_URL": proxy.url()},
                             tmp_path, ports={"ingest": own_settings.ingest_port})
    api = Api(own_settings)
    try:
        procs.start("ingest")
        dataset_id = await api.dataset_with_items([{"id": "i0", "expected_output": "Paris"}])
        run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
        proxy.cut()
        for path, body in [("/v1/datasets", {"name": "d"}),
                           ("/v1/traces", {"traces": [{
                               "trace_id": "t0", "run_id": run_id, "dataset_item_id": "i0",
                               "output": "Paris", "status": "succeeded"}]})]:
            r = await api.ingest.post(path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "5"
            [detail] = r.json()["detail"]
            assert detail["type"] == "unavailable"
            assert detail["msg"].startswith("Postgres is unreachable (")
        proxy.restore()
        await api.create("/v1/datasets", {"name": "d"})  # the same request, once it is back
        assert "503, Postgres is unreachable" in (tmp_path / "ingest.log").read_text()
    finally:
        await api.close()
        procs.stop_all()
