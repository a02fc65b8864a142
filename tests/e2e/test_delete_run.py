"""Deleting a run through the real services: it leaves the query API and the dashboard views,
what names it afterwards is refused with a reason, and deleting again is harmless."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from tests.conftest import evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_a_deleted_run_leaves_the_read_side_and_is_refused_after(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": c} for n, c in enumerate(["Paris", "Rome"])]
    dataset_id = await api.dataset_with_items(items)
    runs = [(await api.create("/v1/runs", {"dataset_id": dataset_id, "name": name}))["id"]
            for name in ("kept", "deleted")]
    for run_id in runs:
        await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                                "dataset_item_id": item["id"], "output": "Paris",
                                "status": "succeeded"} for n, item in enumerate(items)])
    kept, gone = runs
    await api.create("/v1/scores", {"run_id": gone, "dataset_item_id": items[0]["id"],
                                    "value": True}, status=202)
    for run_id in runs:
        await api.eventually(f"/v1/runs/{run_id}",
                             lambda s: s["scores"].get("exact_match", {}).get("count") == 2)
    request = await api.create(f"/v1/runs/{gone}/evaluate", {}, status=202)
    await api.eventually(f"/v1/score-requests/{request['request_id']}", lambda p: p["done"])

    deleted = await api.ingest.delete(f"/v1/runs/{gone}")
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["run_id"] == gone and deleted.json()["dataset_id"] == dataset_id

    # Gone from the read side: its summary, results, the dataset's runs; the request's
    # progress stays, done, its cases withdrawn.
    for _ in range(200):
        if (await api.query.get(f"/v1/runs/{gone}")).status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert (await api.query.get(f"/v1/runs/{gone}")).status_code == 404
    assert (await api.query.get(f"/v1/runs/{gone}/results")).status_code == 404
    progress = (await api.query.get(f"/v1/score-requests/{request['request_id']}")).json()
    assert (progress["requested"], progress["completed"], progress["withdrawn"],
            progress["done"]) == (2, 0, 2, True)
    listed = (await api.query.get(f"/v1/datasets/{dataset_id}/runs")).json()
    assert [r["id"] for r in listed["runs"]] == [kept]
    r = await api.query.get("/v1/compare", params={"runs": f"{kept},{gone}"})
    assert r.status_code == 404 and gone in r.text
    # ... and from the dashboard views; the run kept is untouched.
    conn = await asyncpg.connect(migrated.dsn)
    try:
        in_views = await conn.fetch(
            f'SELECT run_id, count FROM "{migrated.dashboard_schema}".score_summary'
            " WHERE run_id = ANY($1::text[])", runs)
    finally:
        await conn.close()
    assert [(r["run_id"], r["count"]) for r in in_views] == [(kept, 2)]

    # Refused from now on, naming the field; deleting again answers as the first time.
    trace = {"trace_id": f"{gone}-late", "run_id": gone, "dataset_item_id": items[0]["id"],
             "output": "Paris", "status": "succeeded"}
    r = await api.ingest.post("/v1/traces", json={"traces": [trace]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 0, "run_id"]
    assert "was deleted" in r.json()["detail"][0]["msg"]
    r = await api.ingest.post("/v1/scores", json={"run_id": gone, "dataset_item_id": items[0]["id"],
                                                  "value": False})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "run_id"]
    assert (await api.ingest.post(f"/v1/runs/{gone}/evaluate", json={})).status_code == 404
    again = await api.ingest.delete(f"/v1/runs/{gone}")
    assert again.status_code == 202 and again.json() == deleted.json()
    assert (await api.ingest.delete(f"/v1/runs/{uuid.uuid4()}")).status_code == 404
    # A replay leaves the deleted run out (its results would be skipped anyway).
    replayed = json.loads((await evalstream_command(
        settings_env(migrated), "replay", "--run", gone, "--run", kept, "--json",
        "--no-progress")).strip().splitlines()[-1])
    assert (replayed["deleted"], replayed["requested"], replayed["runs"]) == (2, 2, {kept: 2})
    assert (await api.query.get(f"/v1/runs/{kept}")).json()["scores"]["exact_match"]["count"] == 2


async def test_a_deleted_dataset_takes_its_items_and_runs_with_it(api):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": "Paris"} for n in range(2)]
    kept_id = await api.dataset_with_items(items, name="kept")
    dataset_id = await api.dataset_with_items(items, name="doomed")
    runs = [(await api.create("/v1/runs", {"dataset_id": dataset_id, "name": n}))["id"]
            for n in ("a", "b")]
    for run_id in runs:
        await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                                "dataset_item_id": item["id"], "output": "Paris",
                                "status": "succeeded"} for n, item in enumerate(items)])
        await api.eventually(f"/v1/runs/{run_id}",
                             lambda s: s["scores"].get("exact_match", {}).get("count") == 2)
    assert (await api.ingest.delete(f"/v1/runs/{runs[0]}")).status_code == 202  # one already

    r = await api.ingest.delete(f"/v1/datasets/{dataset_id}")
    assert r.status_code == 202, r.text
    assert r.json()["runs_deleted"] == sorted(runs)
    for _ in range(200):
        if (await api.query.get(f"/v1/datasets/{dataset_id}")).status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert (await api.query.get(f"/v1/datasets/{dataset_id}")).status_code == 404
    assert (await api.query.get(f"/v1/datasets/{dataset_id}/items")).status_code == 404
    assert [(await api.query.get(f"/v1/runs/{run_id}")).status_code for run_id in runs] == [
        404, 404]
    listed = (await api.query.get("/v1/datasets", params={"limit": 1000})).json()["datasets"]
    ids = {d["id"] for d in listed}
    assert kept_id in ids and dataset_id not in ids
    # The item ids are the kept dataset's alone again: a trace outside runs naming one is no
    # longer ambiguous.
    assert (await api.query.get(f"/v1/datasets/{kept_id}/items")).json()["total"] == 2
    await api.post_traces([{"trace_id": f"{prefix}-alone", "dataset_item_id": items[0]["id"],
                            "output": "Paris", "status": "succeeded"}])

    refused = [
        await api.ingest.post(f"/v1/datasets/{dataset_id}/items", json={"items": items}),
        await api.ingest.put(f"/v1/datasets/{dataset_id}/evaluators",
                             json=[{"type": "exact_match"}]),
        await api.ingest.post("/v1/runs", json={"dataset_id": dataset_id, "name": "c"}),
        await api.ingest.post("/v1/traces", json={"traces": [{
            "trace_id": "late", "run_id": runs[1], "dataset_item_id": items[0]["id"],
            "output": "Paris", "status": "succeeded"}]})]
    assert [r.status_code for r in refused] == [404, 404, 422, 422]
    assert refused[2].json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert "was deleted" in refused[2].json()["detail"][0]["msg"]
    again = await api.ingest.delete(f"/v1/datasets/{dataset_id}")
    assert again.status_code == 202 and again.json() == r.json()
