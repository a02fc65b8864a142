"""Replay and rebuild end to end, on a stack of their own (topics, schemas, consumer groups and
service processes), since both swap parts of a running system: a replay after an evaluator's
version changed rescores only the chosen runs, deterministically; a rebuild from offset zero
answers every read API exactly as the live read models did, and the query API and the live
consumer follow its switch while the system keeps serving."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from services.database import create_pool
from services.devstack import ServiceProcesses
from services.log_reader import LogReader
from services.settings import Settings
from tests.conftest import (
    ROOT,
    Api,
    evalstream_command,
    make_settings,
    running_services,
    settings_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

ITEMS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid")]
SPECS = [{"type": "contains", "name": "mentions_paris", "keywords": ["paris"]},
         {"type": "exact_match"}]
OUTPUTS = ["Parisian bistro", "Berlin", "Paris", None]  # None: the trace failed


@pytest.fixture(scope="module")
async def own_settings(kafka_bootstrap: str, database_url: str) -> Settings:
    from services.database import migrate_all
    from services.messaging import ensure_topics

    settings = make_settings(kafka_bootstrap, database_url, uuid.uuid4().hex[:8])
    await migrate_all(settings)
    await ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def own_services(own_settings: Settings, tmp_path_factory) -> Iterator[ServiceProcesses]:
    with running_services(own_settings, tmp_path_factory.mktemp("own-logs")) as procs:
        yield procs


@pytest.fixture
async def api(own_services: ServiceProcesses, own_settings: Settings) -> AsyncIterator[Api]:
    client = Api(own_settings)
    yield client
    await client.close()


async def _cli(env: dict, *args: str, timeout: float = 120) -> dict:  # noqa: ASYNC109
    """An `evalstream ... --json` command as a user runs it; returns its JSON report."""
    out = await evalstream_command(env, *args, "--json", "--no-progress", timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


async def _run(api: Api, dataset_id: str, items: list[str], outputs: list) -> str:
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
    await api.post_traces([
        {"trace_id": f"{run_id}-{n}", "run_id": run_id, "dataset_item_id": item,
         "output": out, "status": "succeeded" if out else "failed", "latency_ms": 10.0 * n,
         "cost": 0.25, "usage": {"input_tokens": 4, "output_tokens": 2},
         "metadata": {"attempt": n % 2}}
        for n, (item, out) in enumerate(zip(items, outputs, strict=True))])
    return run_id


async def _done(api: Api, request_id: str, timeout: float = 60) -> dict:  # noqa: ASYNC109
    return await api.eventually(f"/v1/score-requests/{request_id}", lambda p: p["done"],
                                timeout=timeout)


async def _scores(api: Api, run_id: str, items: list[str]) -> dict:
    """(item, score id) -> (name, source, value, evaluator version) of the run's items."""
    out = {}
    for item in items:
        r = await api.query.get(f"/v1/runs/{run_id}/items/{item}/scores/history")
        for s in r.json()["scores"] if r.status_code == 200 else ():
            out[(item, s["score_id"])] = (s["name"], s["source"], s["value"],
                                          s["evaluator_version"])
    return out


async def _history(api: Api, run_id: str, item: str, name: str) -> list[dict]:
    r = await api.query.get(f"/v1/runs/{run_id}/items/{item}/scores/history")
    return next(s for s in r.json()["scores"] if s["name"] == name)["history"]


async def test_replay_after_a_version_change_rescores_only_the_chosen_runs(
        api, own_services, own_settings):
    prefix = uuid.uuid4().hex[:8]
    items = [f"{prefix}-{n}" for n in range(len(ITEMS))]
    dataset_id = await api.dataset_with_items(
        [{"id": i, "input": {"q": f"Capital of {c}?"}, "expected_output": e,
          "metadata": {"tags": ["capital", c[0].lower()]}}
         for i, (c, e) in zip(items, ITEMS, strict=True)], SPECS)
    chosen = await _run(api, dataset_id, items, OUTPUTS)
    other = await _run(api, dataset_id, items, OUTPUTS)
    # More shapes for the rebuild below: the same trace twice, and a trace that replaces one.
    await api.post_traces([{"trace_id": f"{other}-0", "run_id": other,
                            "dataset_item_id": items[0], "output": OUTPUTS[0],
                            "status": "succeeded", "latency_ms": 0.0, "cost": 0.25,
                            "usage": {"input_tokens": 4, "output_tokens": 2}}])
    await api.post_traces([{"trace_id": f"{other}-1b", "run_id": other,
                            "dataset_item_id": items[1], "output": "Berlin, Germany",
                            "status": "succeeded"}])
    for run_id in (chosen, other):
        await api.eventually(
            f"/v1/runs/{run_id}", lambda s: s["scores"].get("mentions_paris", {}).get("count")
            == 3 and s["scores"].get("exact_match", {}).get("count") == 3, timeout=60)
    accepted = await api.create(f"/v1/runs/{other}/evaluate", {}, status=202)
    await _done(api, accepted["request_id"])
    before_other = await _scores(api, other, items)
    assert {v[3] for v in before_other.values()} == {"1"}
    env = settings_env(own_settings)

    # A new evaluator deployment: `contains` v2 matches whole words only.
    own_services.stop("evaluator")
    v2 = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "serve", "evaluator", cwd=ROOT,
        env={**env, "EVALSTREAM_EVALUATOR_PLUGINS": ",".join(
            [*own_settings.evaluator_plugins, "tests/e2e/evaluator_contains_v2.py"])})
    try:
        report = await _cli(env, "replay", "--run", chosen)
        assert (report["requested"], report["runs"]) == (3, {chosen: 3})
        progress = await _done(api, report["request_id"])
        assert (progress["origin"], progress["run_id"], progress["completed"]) == (
            "replay", chosen, 3)
        after_v2 = await _scores(api, chosen, items)

        # Determinism: the same slice replayed again with the same versions gives the same
        # score ids and values; each replay is a new request, so history grows by one value.
        again = await _cli(env, "replay", "--run", chosen)
        await _done(api, again["request_id"])
        assert await _scores(api, chosen, items) == after_v2

        # Filters: every kind given must match; `since` goes by the events' own time.
        assert (await _cli(env, "replay", "--run", chosen, "--dataset", "nope"))[
            "requested"] == 0
        assert (await _cli(env, "replay", "--dataset", dataset_id, "--trace", f"{chosen}-2",
                           "--since", "2020-01-01T00:00:00"))["requested"] == 1
        assert (await _cli(env, "replay", "--run", chosen, "--since", "2100-01-01"))[
            "requested"] == 0
    finally:
        v2.send_signal(signal.SIGINT)
        await asyncio.wait_for(v2.wait(), 20)
        own_services.start("evaluator")

    results = (await api.query.get(f"/v1/runs/{chosen}/results")).json()["items"]
    bistro = next(s for s in results[0]["scores"] if s["name"] == "mentions_paris")
    assert (bistro["value"], bistro["evaluator_version"]) == (0.0, "2")  # "Parisian" ≠ "Paris"
    exact = next(s for s in results[0]["scores"] if s["name"] == "exact_match")
    assert exact["evaluator_version"] == "1"  # its evaluator did not change
    assert [(h["value"], h["evaluator_version"], h["request_id"]) for h in await _history(
        api, chosen, items[0], "mentions_paris")] == [
        (1.0, "1", None), (0.0, "2", report["request_id"]), (0.0, "2", again["request_id"])]
    assert {(v[0], v[3]) for v in after_v2.values()} == {("mentions_paris", "2"),
                                                           ("exact_match", "1")}
    # The run not chosen is untouched: same ids, values and version 1.
    assert await _scores(api, other, items) == before_other


async def _quiet(settings: Settings, timeout: float = 60) -> None:  # noqa: ASYNC109
    """Until ingest's outbox is empty and both consumer groups have committed the end of every
    topic they read, twice in a row."""
    groups = {settings.evaluator_group: [settings.topics.traces, settings.topics.score_requests],
              settings.projections_group: [settings.topics.catalog, settings.topics.traces,
                                           settings.topics.scores]}
    # A member-less consumer per group only reads the group's committed offsets; it joins
    # nothing. (The admin client cannot decode the development broker's OffsetFetch answer.)
    readers = {group: AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group,
                                       enable_auto_commit=False) for group in groups}
    for consumer in readers.values():
        await consumer.start()
    db = await asyncpg.connect(settings.dsn)
    calm = 0
    try:
        async with LogReader(settings, sorted({t for ts in groups.values() for t in ts}),
                             client_id="test-quiet") as log:
            deadline = asyncio.get_running_loop().time() + timeout
            while calm < 2:
                assert asyncio.get_running_loop().time() < deadline, "consumers never caught up"
                behind = await db.fetchval(
                    f"SELECT count(*) FROM {settings.catalog_schema}.outbox")
                ends = await log.end_offsets()
                for group, topics in groups.items():
                    for tp, end in ends.items():
                        if tp.topic in topics:
                            behind += max(end - (await readers[group].committed(tp) or 0), 0)
                calm = calm + 1 if behind == 0 else 0
                await asyncio.sleep(0.3)
    finally:
        await db.close()
        for consumer in readers.values():
            await consumer.stop()


async def _answers(api: Api, conn: asyncpg.Connection) -> dict[str, object]:
    """Every read API of the query service (its OpenAPI document lists them) for every id the
    read models hold: url -> (status, body)."""
    ids = {
        "run_id": [r[0] for r in await conn.fetch("SELECT id FROM runs ORDER BY id")],
        "dataset_id": [r[0] for r in await conn.fetch("SELECT id FROM datasets ORDER BY id")],
        "request_id": [r[0] for r in await conn.fetch(
            "SELECT request_id FROM score_requests ORDER BY 1")],
        "trace_id": [r[0] for r in await conn.fetch(
            "SELECT DISTINCT trace_id FROM run_items ORDER BY 1")],
    }
    # A window that does not move between the two calls (the default ends now).
    until = await conn.fetchval(
        "SELECT date_trunc('day', max(completed_at)) + interval '1 day' FROM run_items")
    window = {"since": (until - timedelta(days=30)).isoformat(), "until": until.isoformat()}
    pairs = [tuple(r) for r in await conn.fetch(
        "SELECT run_id, dataset_item_id FROM run_items WHERE run_id IS NOT NULL"
        " AND dataset_item_id IS NOT NULL ORDER BY 1, 2")]
    compared = [",".join(sorted(r[0])) for r in await conn.fetch(
        "SELECT array_agg(id) FROM runs GROUP BY dataset_id HAVING count(*) > 1")]
    # Every metadata key the items and traces have, to break the runs down by.
    bys = [r[0] for r in await conn.fetch("""
        SELECT DISTINCT 'item.' || jsonb_object_keys(metadata) FROM dataset_items
        WHERE jsonb_typeof(metadata) = 'object'
        UNION SELECT DISTINCT 'trace.' || jsonb_object_keys(metadata) FROM run_items
        WHERE jsonb_typeof(metadata) = 'object' ORDER BY 1""")] or ["item.category"]
    spec = (await api.query.get("/openapi.json")).json()
    answers: dict[str, object] = {}
    for path, operations in sorted(spec["paths"].items()):
        if "get" not in operations or path == "/v1/read-model":  # that one names the schema
            continue
        parameters = operations["get"].get("parameters", [])
        query: dict[str, object] = {}
        if any(p["name"] == "limit" and p["in"] == "query" for p in parameters):
            query["limit"] = 1000
        required = sorted(p["name"] for p in parameters if p["in"] == "query" and p["required"])
        params = re.findall(r"{(\w+)}", path)
        if params == ["run_id", "dataset_item_id"]:
            urls = [path.format(run_id=r, dataset_item_id=i) for r, i in pairs]
        elif len(params) == 1 and params[0] in ids:
            urls = [path.replace(f"{{{params[0]}}}", v) for v in ids[params[0]]]
        else:
            assert not params, f"the rebuild test knows no ids for {path}: teach it"
            urls = [path]
        if path == "/v1/monitoring":
            query |= window | {"interval": "day"}
        queries = [query]
        if "by" in required:
            required.remove("by")
            queries = [{**q, "by": by} for q in queries for by in bys]
        if required == ["runs"]:
            queries = [{**q, "runs": runs} for q in queries for runs in compared]
        else:
            assert not required, f"the rebuild test cannot fill {required} of {path}: teach it"
        for url in urls:
            for q in queries:
                r = await api.query.get(url, params=q)
                body = r.text if r.headers["content-type"].startswith("text/csv") else r.json()
                answers[f"{url}?{sorted(q.items())}"] = (r.status_code, body)
    assert len(answers) > 20
    return answers


async def _tables(dsn: str, schema: str) -> dict[str, list[str]]:
    """Every read-model table's rows, in a canonical order."""
    pool = await create_pool(dsn, schema, max_size=1)
    try:
        async with pool.acquire() as conn:
            names = [r[0] for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                " AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'", schema)]
            return {name: sorted(repr(tuple(r.values())) for r in await conn.fetch(
                f'SELECT * FROM "{schema}"."{name}"')) for name in sorted(names)}
    finally:
        await pool.close()


async def test_rebuild_answers_exactly_as_the_live_read_models(api, own_settings):
    settings = own_settings
    admin = await asyncpg.connect(settings.dsn)
    try:
        live = await admin.fetchval(
            "SELECT live_schema FROM evalstream.read_models WHERE name = $1",
            settings.read_model_schema)
        # The replay test above left runs, requests and history; add verdicts, a correction
        # and catalog changes.
        run_id, dataset_id, item = await admin.fetchrow(
            f"SELECT i.run_id, r.dataset_id, i.dataset_item_id FROM {live}.run_items i"
            f" JOIN {live}.runs r ON r.id = i.run_id ORDER BY i.run_id, i.dataset_item_id"
            " LIMIT 1")
        for body in ({"value": False, "comment": "no"},
                     {"value": True, "comment": "yes after all"},
                     {"name": "tone", "data_type": "categorical", "value": "terse"},
                     {"name": "second_look", "value": True}):
            await api.create("/v1/scores", {"run_id": run_id, "dataset_item_id": item, **body},
                             status=202)
        # ... one of them taken back ...
        await api.create("/v1/scores/retract", {"run_id": run_id, "dataset_item_id": item,
                                                "name": "second_look"}, status=202)
        await api.create(f"/v1/datasets/{dataset_id}/items", {"items": [
            {"id": item, "input": {"q": "?"}, "expected_output": "Lyon"}]})
        r = await api.ingest.put(f"/v1/datasets/{dataset_id}/evaluators",
                                 json=[{"type": "exact_match"}])
        assert r.status_code == 200, r.text
        r = await api.ingest.put(f"/v1/datasets/{dataset_id}/baseline", json={"run_id": run_id})
        assert r.status_code == 200, r.text
        # ... an item removed, and another removed then upserted again, ...
        extra = [{"id": f"extra-{uuid.uuid4().hex[:6]}", "expected_output": out}
                 for out in ("a", "b")]
        await api.create(f"/v1/datasets/{dataset_id}/items", {"items": extra})
        r = await api.ingest.post(f"/v1/datasets/{dataset_id}/items/delete",
                                  json={"ids": [e["id"] for e in extra]})
        assert r.status_code == 202, r.text
        await api.create(f"/v1/datasets/{dataset_id}/items", {"items": extra[1:]})
        # ... and a deleted run, whose trace and scores the rebuild meets before its deletion.
        other = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "doomed"}))["id"]
        await api.post_traces([{"trace_id": f"{other}-0", "run_id": other,
                                "dataset_item_id": item, "output": "Lyon",
                                "status": "succeeded"}])
        await api.eventually(f"/v1/runs/{other}", lambda s: s["items_with_scores"] == 1)
        assert (await api.ingest.delete(f"/v1/runs/{other}")).status_code == 202
        # ... and production traces a scoring rule scored (its events in the catalog's log).
        tag = uuid.uuid4().hex[:6]
        r = await api.ingest.put(f"/v1/scoring-rules/prod-{tag}", json={
            "evaluators": [{"type": "regex", "pattern": "^L", "name": f"starts_l_{tag}"}],
            "where": {"suite": tag}})
        assert r.status_code == 200, r.text
        for n, out in enumerate(["Lyon", "Nice", "Lille"]):
            await api.post_traces([{"trace_id": f"prod-{tag}-{n}", "output": out,
                                    "status": "succeeded", "metadata": {"suite": tag}}])
            await api.eventually(f"/v1/traces/prod-{tag}-{n}", lambda t: len(t["scores"]) == 1)
        assert (await api.ingest.delete(f"/v1/scoring-rules/prod-{tag}")).status_code == 202
        # ... of which retention removed the first two (docs/adr/0017), and a verdict on one of
        # them given after the cut, which stays (its trace will not come back).
        cut = (await api.query.get(f"/v1/traces/prod-{tag}-2")).json()["completed_at"]
        swept = json.loads((await evalstream_command(
            settings_env(settings), "projections", "sweep", "--older-than", cut,
            "--json")).strip().splitlines()[-1])
        assert swept["deleted"]["run_items"] == 2 and swept["deleted"]["scores"] == 2, swept
        r = await api.query.get(f"/v1/traces/prod-{tag}-0")
        assert r.status_code == 404, r.text
        assert "removed by retention" in r.json()["detail"][0]["msg"]
        await api.create("/v1/scores", {"trace_id": f"prod-{tag}-0", "value": True}, status=202)
        # A replay leaves out what retention removed (it would record scores nothing shows).
        replayed = await _cli(settings_env(settings), "replay", "--trace", f"prod-{tag}-0",
                              "--trace", f"prod-{tag}-2")
        assert (replayed["matched"], replayed["expired"], replayed["requested"]) == (1, 1, 1)
        await _done(api, replayed["request_id"])
        await _quiet(settings)

        pool = await create_pool(settings.dsn, live, max_size=1)
        async with pool.acquire() as conn:
            before = await _answers(api, conn)
        await pool.close()
        tables_before = await _tables(settings.dsn, live)
        assert len(tables_before["score_history"]) > len(tables_before["scores"])
        assert len(tables_before["deleted_runs"]) == 1 and other in tables_before["deleted_runs"][0]
        assert not any(other in row for row in tables_before["runs"])
        assert len(tables_before["deleted_dataset_items"]) == 2
        assert len(tables_before["retracted_scores"]) == 1
        assert any(run_id in row for row in tables_before["datasets"])  # its baseline run
        items_left = " ".join(tables_before["dataset_items"])
        assert extra[1]["id"] in items_left and extra[0]["id"] not in items_left
        # prod-2's score and the verdict on prod-0
        assert sum(f"prod-{tag}-" in row for row in tables_before["scores"]) == 2
        assert sum(f"prod-{tag}-" in row for row in tables_before["run_items"]) == 1
        assert len(tables_before["retention"]) == 1 and "(1, 1, 1," not in tables_before[
            "retention"][0]  # not -infinity: the cut

        # The rebuild runs while the query API keeps answering.
        rebuild = asyncio.create_task(
            _cli(settings_env(settings), "projections", "rebuild"))
        statuses = []
        while not rebuild.done():
            statuses.append((await api.query.get(f"/v1/runs/{run_id}")).status_code)
            await asyncio.sleep(0.02)
        report = await rebuild
        assert statuses and set(statuses) == {200}
        assert report["previous_schema"] == live and report["schema"] != live
        assert report["events"] > 0 and report["undecodable"] == 0
        new = report["schema"]
        await api.eventually("/v1/read-model", lambda r: r["schema"] == new)

        pool = await create_pool(settings.dsn, new, max_size=1)
        async with pool.acquire() as conn:
            after = await _answers(api, conn)
        await pool.close()
        assert after.keys() == before.keys()
        for url in before:
            assert after[url] == before[url], url
        tables_after = await _tables(settings.dsn, new)
        assert tables_after.keys() == tables_before.keys()
        for table in tables_before:
            assert tables_after[table] == tables_before[table], table
        viewed = {r[0] for r in await admin.fetch(
            "SELECT DISTINCT table_schema FROM information_schema.view_table_usage"
            " WHERE view_schema = $1", settings.dashboard_schema)}
        assert viewed == {new}

        # The live consumer follows the switch: a new trace lands in the new schema only.
        trace_id = f"after-rebuild-{uuid.uuid4().hex[:6]}"
        await api.post_traces([{"trace_id": trace_id, "run_id": run_id, "output": "late",
                                "status": "succeeded"}])
        await api.eventually(f"/v1/runs/{run_id}/results", lambda r: any(
            i["trace_id"] == trace_id for i in r["items"]))
        where = "SELECT 1 FROM {}.run_items WHERE trace_id = $1"
        assert await admin.fetchval(where.format(new), trace_id) == 1
        assert await admin.fetchval(where.format(live), trace_id) is None
    finally:
        await admin.close()
