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

    # Gone from the read side: its summary, results, request progress, the dataset's runs.
    for _ in range(200):
        if (await api.query.get(f"/v1/runs/{gone}")).status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert (await api.query.get(f"/v1/runs/{gone}")).status_code == 404
    assert (await api.query.get(f"/v1/runs/{gone}/results")).status_code == 404
    assert (await api.query.get(
        f"/v1/score-requests/{request['request_id']}")).status_code == 404
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
