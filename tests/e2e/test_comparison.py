"""Run comparison, results, datasets and the dashboard views end to end: three runs of one dataset
(improvements, regressions, a failed and a missing item) go through HTTP → broker → evaluator →
projections, and every figure the query API and the views give is checked against the figures
tests/comparison_scenario.py computes from the scenario alone."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import asyncpg
import pytest

from services.settings import Settings
from tests import comparison_scenario as sc
from tests.conftest import Api

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


@dataclass
class Built:
    api: Api
    settings: Settings
    dataset_id: str
    items: list[dict]
    runs: dict[str, str]  # scenario key → run id
    trace_ids: dict[tuple[str, int], str]
    foreign_run: str      # a run of another dataset

    def compare(self, keys: str, baseline: str | None = None, **params) -> str:
        path = "/v1/compare?runs=" + ",".join(self.runs[k] for k in keys)
        if baseline:
            path += f"&baseline={self.runs[baseline]}"
        return path + "".join(f"&{k}={v}" for k, v in params.items())


@pytest.fixture(scope="module")
async def built(services, migrated: Settings):
    api = Api(migrated)
    prefix = uuid.uuid4().hex[:8]
    items = sc.items(prefix)
    dataset_id = await api.dataset_with_items(items, sc.EVALUATORS, name=f"capitals {prefix}")
    runs = {key: (await api.create("/v1/runs", {"dataset_id": dataset_id,
                                                "name": f"run {key}"}))["id"]
            for key in sc.RUN_KEYS}
    traces, trace_ids = [], {}
    for key in sc.RUN_KEYS:
        for n, item in enumerate(items):
            if (trace := sc.trace(key, n)) is not None:
                trace_ids[key, n] = f"{prefix}-{key}-{n}"
                traces.append({**trace, "trace_id": trace_ids[key, n], "run_id": runs[key],
                               "dataset_item_id": item["id"]})
    await api.post_traces(traces)
    other = await api.dataset_with_items([{"id": f"{prefix}-other", "input": 1}])
    foreign_run = (await api.create("/v1/runs", {"dataset_id": other, "name": "other"}))["id"]

    expected = {key: sc.run_figures(key) for key in sc.RUN_KEYS}

    def complete(body: dict) -> bool:
        return all(
            r["completed_items"] == expected[k]["completed_items"]
            and r["failed_items"] == expected[k]["failed_items"]
            and {n: s["count"] for n, s in r["scores"].items()}
            == {n: s["count"] for n, s in expected[k]["scores"].items()}
            for k, r in zip(sc.RUN_KEYS, body["runs"], strict=True))

    built = Built(api, migrated, dataset_id, items, runs, trace_ids, foreign_run)
    await api.eventually(built.compare("ABC", include="runs"), complete, timeout=30)
    await api.eventually(f"/v1/runs/{foreign_run}", lambda s: True)
    yield built
    await api.close()


RUN_FIELDS = ("total_items", "completed_items", "failed_items", "missing_items", "total_cost",
              "total_tokens", "latency_p50_ms", "latency_p95_ms", "items_with_scores",
              "pass_rate", "scores")


def _run_figures(entry: dict) -> dict:
    return {k: entry[k] for k in RUN_FIELDS}


async def test_runs_side_by_side(built: Built):
    body = (await built.api.query.get(built.compare("ABC", "A"))).json()
    assert body["dataset_id"] == built.dataset_id
    assert body["baseline"] == built.runs["A"]
    assert [r["id"] for r in body["runs"]] == [built.runs[k] for k in "ABC"]
    for key, entry in zip("ABC", body["runs"], strict=True):
        assert entry["name"] == f"run {key}"
        assert entry["is_baseline"] is (key == "A")
        assert entry["dataset_id"] == built.dataset_id
        assert _run_figures(entry) == sc.close(sc.run_figures(key)), key
        # The same figures as the run's own summary.
        own = (await built.api.query.get(f"/v1/runs/{built.runs[key]}")).json()
        assert {k: own[k] for k in RUN_FIELDS} == _run_figures(entry)
    started = [r["started_at"] for r in body["runs"]]
    assert started == sorted(started)


@pytest.mark.parametrize("keys,baseline", [("ABC", "A"), ("CB", "B"), ("BAC", None)])
async def test_scores_against_the_baseline(built: Built, keys: str, baseline: str | None):
    body = (await built.api.query.get(built.compare(keys, baseline, include="scores"))).json()
    assert set(body) == {"dataset_id", "baseline", "run_ids", "scores"}
    base = baseline or keys[0]
    expected = sc.score_figures(list(keys), base)
    assert [s["name"] for s in body["scores"]] == list(sc.SCORE_NAMES)
    for score in body["scores"]:
        assert [r["run_id"] for r in score["runs"]] == [built.runs[k] for k in keys]
        for key, entry in zip(keys, score["runs"], strict=True):
            del entry["run_id"]
            assert entry == sc.close(expected[score["name"]][key]), (score["name"], key)


def _items_expected(built: Built, keys: str, baseline: str, indices: list[int]) -> list[dict]:
    template = built.settings.trace_url_template
    figures = sc.item_figures(list(keys), baseline)
    out = []
    for n in indices:
        item = figures[n]
        runs = []
        for key in keys:
            own = item["runs"][key]
            trace_id = built.trace_ids.get((key, n))
            runs.append({
                "run_id": built.runs[key], "status": own["status"], "output": own["output"],
                "error": "timeout" if own["status"] == "failed" else None,
                "trace_id": trace_id,
                "trace_url": template.format(trace_id=quote(trace_id, safe=""))
                if trace_id else None,
                "latency_ms": sc.trace(key, n)["latency_ms"] if trace_id else None,
                "cost": sc.trace(key, n)["cost"] if trace_id else None,
                "scores": own["scores"], "improved": own["improved"],
                "regressed": own["regressed"]})
        out.append({"dataset_item_id": built.items[n]["id"], "input": built.items[n]["input"],
                    "expected_output": built.items[n]["expected_output"], "runs": runs,
                    "status_changed": item["status_changed"], "improved": item["improved"],
                    "regressed": item["regressed"]})
    return out


async def test_items_side_by_side_with_missing_and_failed(built: Built):
    body = (await built.api.query.get(built.compare("ABC", "A", include="items"))).json()
    page = body["items"]
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == (6, 50, 0, None)
    assert page["items"] == sc.close(_items_expected(built, "ABC", "A", list(range(6))))
    b_statuses = [item["runs"][1]["status"] for item in page["items"]]
    assert b_statuses == ["succeeded", "succeeded", "failed", "succeeded", "missing", "succeeded"]


@pytest.mark.parametrize("kind", ["regressions", "improvements", "status_changed"])
@pytest.mark.parametrize("score", [None, "exact_match", "explains"])
async def test_items_filtered(built: Built, kind: str, score: str | None):
    params = {"include": "items", "filter": kind} | ({"score": score} if score else {})
    page = (await built.api.query.get(built.compare("ABC", "A", **params))).json()["items"]
    expected = sc.filtered(list("ABC"), "A", kind, score)
    assert expected, "the scenario must give every filter something to find"
    assert page["total"] == len(expected)
    assert page["items"] == sc.close(_items_expected(built, "ABC", "A", expected))
    # Against another baseline the same filter finds other items.
    page = (await built.api.query.get(built.compare("CB", "B", **params))).json()["items"]
    assert [i["dataset_item_id"] for i in page["items"]] == [
        built.items[n]["id"] for n in sc.filtered(list("CB"), "B", kind, score)]


async def test_items_paginate(built: Built):
    seen = []
    offset = 0
    while offset is not None:
        page = (await built.api.query.get(
            built.compare("ABC", "A", include="items", limit=4, offset=offset))).json()["items"]
        assert page["total"] == 6 and page["limit"] == 4
        seen += [i["dataset_item_id"] for i in page["items"]]
        offset = page["next_offset"]
    assert seen == [item["id"] for item in built.items]
    past = (await built.api.query.get(
        built.compare("ABC", "A", include="items", offset=10))).json()["items"]
    assert past["items"] == [] and past["total"] == 6
    regressions = (await built.api.query.get(built.compare(
        "ABC", "A", include="items", filter="regressions", limit=2, offset=2))).json()["items"]
    assert [i["dataset_item_id"] for i in regressions["items"]] == [
        built.items[n]["id"] for n in sc.filtered(list("ABC"), "A", "regressions")[2:4]]


async def test_bad_comparisons_name_the_parameter(built: Built):
    q = built.api.query
    a, b = built.runs["A"], built.runs["B"]
    cases = [
        (f"/v1/compare?runs={a},nope", 404, "runs"),
        (f"/v1/compare?runs={a},{built.foreign_run}", 422, "runs"),
        (f"/v1/compare?runs={a}", 422, "runs"),
        (f"/v1/compare?runs={a},{a}", 422, "runs"),
        ("/v1/compare", 422, "runs"),
        (f"/v1/compare?runs={a},{b}&baseline={built.runs['C']}", 422, "baseline"),
        (f"/v1/compare?runs={a},{b}&filter=worse", 422, "filter"),
        (f"/v1/compare?runs={a},{b}&include=everything", 422, "include"),
        (f"/v1/compare?runs={a},{b}&limit=0", 422, "limit"),
        (f"/v1/compare?runs={a},{b}&offset=-1", 422, "offset"),
    ]
    for path, status, field in cases:
        r = await q.get(path)
        assert r.status_code == status, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", field], (path, r.text)
    assert (await q.get(f"/v1/compare?runs={a},{b}", headers={"Authorization": "Bearer x"})
            ).status_code == 401


async def test_a_run_broken_down_by_item_and_trace_metadata(built: Built):
    """Through HTTP: each group of a run's items (by a metadata key of the dataset items, their
    tags, or the traces' metadata) has the figures the scenario gives it."""
    for key in sc.RUN_KEYS:
        for by in ("item.region", "item.tags", "trace.attempt"):
            r = await built.api.query.get(f"/v1/runs/{built.runs[key]}/breakdown?by={by}")
            assert r.status_code == 200, r.text
            expected = sc.breakdown_figures(key, by)
            body = r.json()
            assert body["total"] == len(expected) and body["by"] == by
            assert {g.pop("value"): g for g in body["groups"]} == sc.close(expected), (key, by)


async def test_runs_compared_per_group(built: Built):
    r = await built.api.query.get(built.compare("ABC", "B", by="item.region").replace(
        "/v1/compare?", "/v1/compare/breakdown?"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["baseline"] == built.runs["B"] and body["dataset_id"] == built.dataset_id
    expected = {k: sc.breakdown_figures(k, "item.region") for k in "ABC"}
    assert [g["value"] for g in body["groups"]] == ["central", "south", "west"]
    for group in body["groups"]:
        a, b, c = group["runs"]
        assert [e["run_id"] for e in group["runs"]] == [built.runs[k] for k in "ABC"]
        assert b["is_baseline"] and b["delta_pass_rate"] is None
        for key, entry in (("A", a), ("C", c)):
            own, base = expected[key][group["value"]], expected["B"][group["value"]]
            assert entry["items"] == own["items"]
            assert entry["delta_pass_rate"] == pytest.approx(own["pass_rate"] - base["pass_rate"])
            for name, score in entry["scores"].items():
                assert score["delta_average"] == pytest.approx(
                    own["scores"][name]["average"] - base["scores"][name]["average"])


async def test_a_groups_items_are_a_results_filter_away(built: Built):
    """Each group of a breakdown drills down to its items: /results with `by` and `group`
    lists exactly the group's traced items (as many as the breakdown counts), each with the
    item's and the trace's metadata; the CSV export filters the same way."""
    q = built.api.query
    for key in sc.RUN_KEYS:
        run_id = built.runs[key]
        for by in ("item.region", "item.tags", "item.geo.coastal", "trace.attempt"):
            groups = (await q.get(f"/v1/runs/{run_id}/breakdown", params={"by": by})).json()
            for g in groups["groups"]:
                if g["value"] is None:
                    continue
                text = json.dumps(g["value"]) if not isinstance(g["value"], str) else g["value"]
                r = await q.get(f"/v1/runs/{run_id}/results",
                                params={"by": by, "group": text, "limit": 100})
                assert r.status_code == 200, r.text
                got = sorted(i["dataset_item_id"] for i in r.json()["items"])
                want = sorted(built.items[n]["id"] for n in range(len(built.items))
                              if sc.trace(key, n) is not None and g["value"] in sc.groups_of(by, n))
                assert got == want and len(got) == g["items"], (key, by, g["value"])
    page = (await q.get(f"/v1/runs/{built.runs['B']}/results",
                        params={"by": "item.tags", "group": "large"})).json()
    for item in page["items"]:
        n = [i["id"] for i in built.items].index(item["dataset_item_id"])
        assert item["item_metadata"] == sc.metadata(n)
        assert item["metadata"] == sc.trace("B", n)["metadata"]
    r = await q.get(f"/v1/runs/{built.runs['A']}/results.csv",
                    params={"by": "item.region", "group": "south"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["dataset_item_id"] for row in rows] == [built.items[2]["id"], built.items[3]["id"]]
    assert json.loads(rows[0]["item_metadata"]) == sc.metadata(2)
    assert json.loads(rows[0]["metadata"]) == {"attempt": 1}
    for params, field in (({"by": "item.region"}, "group"), ({"group": "south"}, "by"),
                          ({"by": "region", "group": "south"}, "by")):
        for path in ("results", "results.csv"):
            r = await q.get(f"/v1/runs/{built.runs['A']}/{path}", params=params)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field], (
                path, params, r.text)


async def test_bad_breakdowns_name_the_parameter(built: Built):
    q = built.api.query
    a, b = built.runs["A"], built.runs["B"]
    cases = [
        (f"/v1/runs/{a}/breakdown", 422, ["query", "by"]),
        (f"/v1/runs/{a}/breakdown?by=category", 422, ["query", "by"]),
        (f"/v1/runs/{a}/breakdown?by=item..x", 422, ["query", "by"]),
        (f"/v1/runs/{a}/breakdown?by=item.region&limit=0", 422, ["query", "limit"]),
        ("/v1/runs/nope/breakdown?by=item.region", 404, ["path", "run_id"]),
        (f"/v1/compare/breakdown?runs={a},nope&by=item.region", 404, ["query", "runs"]),
        (f"/v1/compare/breakdown?runs={a},{built.foreign_run}&by=item.region", 422,
         ["query", "runs"]),
        (f"/v1/compare/breakdown?runs={a},{b}&by=items.region", 422, ["query", "by"]),
        (f"/v1/compare/breakdown?runs={a},{b}&by=item.region&baseline=x", 422,
         ["query", "baseline"]),
    ]
    for path, status, loc in cases:
        r = await q.get(path)
        assert r.status_code == status, (path, r.text)
        assert r.json()["detail"][0]["loc"] == loc, (path, r.text)


async def test_views_give_the_same_figures_to_a_read_only_role(built: Built):
    conn = await asyncpg.connect(built.settings.dsn)
    try:
        await conn.execute("SET ROLE evalstream_reader")
        figures = await sc.view_figures(conn, built.settings.dashboard_schema, built.runs, "A")
    finally:
        await conn.close()
    item_ids = [i["id"] for i in built.items]
    expected = sc.expected_view_figures(list("ABC"), "A", item_ids)
    for key, run in figures["runs"].items():
        assert sc.subset(run, expected["runs"][key]) == sc.close(expected["runs"][key]), key
    assert figures["scores"] == sc.close(expected["scores"])
    assert figures["statuses"] == expected["statuses"]


async def test_results_page_sort_and_filter(built: Built):
    q, run_a = built.api.query, built.runs["A"]
    template = built.settings.trace_url_template
    body = (await q.get(f"/v1/runs/{run_a}/results?sort=score:explains&order=desc")).json()
    assert body["total"] == 6 and body["next_offset"] is None
    explains = [sc.scores("A", n)["explains"] for n in range(6)]
    # Highest first; ties in item order.
    expected_order = sorted(range(6), key=lambda n: (-explains[n], n))
    assert [i["dataset_item_id"] for i in body["items"]] == [
        built.items[n]["id"] for n in expected_order]
    for item in body["items"]:
        assert item["trace_url"] == template.format(trace_id=item["trace_id"])
        assert {s["name"] for s in item["scores"]} == set(sc.SCORE_NAMES)

    page = (await q.get(f"/v1/runs/{run_a}/results?sort=score:explains&limit=2&offset=2")).json()
    ascending = sorted(range(6), key=lambda n: (explains[n], n))
    assert [i["dataset_item_id"] for i in page["items"]] == [
        built.items[n]["id"] for n in ascending[2:4]]
    assert (page["total"], page["next_offset"]) == (6, 4)

    for outcome, score in [("failed", "exact_match"), ("passed", "exact_match"),
                           ("failed", None), ("passed", None)]:
        path = f"/v1/runs/{run_a}/results?filter={outcome}" + (f"&score={score}" if score else "")
        names = [score] if score else list(sc.SCORE_NAMES)
        keep = [n for n in range(6)
                if (all(sc.scores("A", n)[k] >= sc.PASS for k in names) == (outcome == "passed"))]
        body = (await q.get(path)).json()
        assert [i["dataset_item_id"] for i in body["items"]] == [
            built.items[n]["id"] for n in keep], path

    failed = (await q.get(f"/v1/runs/{built.runs['B']}/results?status=failed")).json()
    assert [i["dataset_item_id"] for i in failed["items"]] == [built.items[2]["id"]]
    assert failed["items"][0]["scores"] == []
    # unscored: the failed trace has no score; every item of A lacks a person's verdict.
    unscored = (await q.get(f"/v1/runs/{built.runs['B']}/results?filter=unscored")).json()
    assert [i["dataset_item_id"] for i in unscored["items"]] == [built.items[2]["id"]]
    awaiting = (await q.get(f"/v1/runs/{run_a}/results?filter=unscored&score=manual")).json()
    assert awaiting["total"] == 6
    assert (await q.get(f"/v1/runs/{run_a}/results?filter=unscored&score=explains")
            ).json()["total"] == 0

    r = await q.get(f"/v1/runs/{run_a}/results?sort=loudness")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "sort"]
    r = await q.get("/v1/runs/no-such-run/results")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "run_id"]


async def test_datasets_and_their_runs(built: Built):
    q = built.api.query
    listing = (await q.get("/v1/datasets?limit=1000")).json()
    mine = next(d for d in listing["datasets"] if d["id"] == built.dataset_id)
    assert (mine["item_count"], mine["run_count"]) == (6, 3)
    assert [{k: v for k, v in e.items() if v is not None}
            for e in mine["evaluators"]] == sc.EVALUATORS

    dataset = (await q.get(f"/v1/datasets/{built.dataset_id}")).json()
    assert dataset["name"].startswith("capitals") and dataset["item_count"] == 6
    latest = (await q.get(f"/v1/runs/{built.runs['C']}")).json()
    assert dataset["latest_run"] == latest
    assert dataset["last_run_at"] == latest["started_at"]

    runs = (await q.get(f"/v1/datasets/{built.dataset_id}/runs")).json()
    assert runs["total"] == 3
    assert [r["id"] for r in runs["runs"]] == [built.runs[k] for k in "CBA"]
    for run in runs["runs"]:
        assert run == (await q.get(f"/v1/runs/{run['id']}")).json()
    page = (await q.get(f"/v1/datasets/{built.dataset_id}/runs?limit=2&offset=2")).json()
    assert [r["id"] for r in page["runs"]] == [built.runs["A"]] and page["next_offset"] is None

    items = (await q.get(f"/v1/datasets/{built.dataset_id}/items?limit=4")).json()
    assert items["total"] == 6 and items["next_offset"] == 4
    assert [i["id"] for i in items["items"]] == [i["id"] for i in built.items[:4]]
    assert items["items"][0]["expected_output"] == "Paris"

    for path in ("/v1/datasets/nope", "/v1/datasets/nope/runs", "/v1/datasets/nope/items"):
        r = await q.get(path)
        assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "dataset_id"]
