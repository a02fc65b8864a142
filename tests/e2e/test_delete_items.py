"""Removing items from a dataset through the running services: they leave the dataset's read
model, later runs do not count them, traces can no longer name them, a run that traced one keeps
its trace and scores, and upserting an item again brings it back."""

from __future__ import annotations

import asyncio
import uuid

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_removed_items_leave_the_dataset_and_later_runs(api):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": f"q{n}", "expected_output": city}
             for n, city in enumerate(["Paris", "Berlin", "Rome", "Madrid"])]
    dataset_id = await api.dataset_with_items(items)
    first = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "before"}))["id"]
    await api.post_traces([{"trace_id": f"{first}-0", "run_id": first,
                            "dataset_item_id": items[0]["id"], "output": "Paris",
                            "status": "succeeded"}])

    async def item_ids() -> list[str] | None:
        r = await api.query.get(f"/v1/datasets/{dataset_id}/items")
        return [i["id"] for i in r.json()["items"]] if r.status_code == 200 else None

    async def eventually_items(expected: list[str]) -> None:
        for _ in range(200):
            if await item_ids() == expected:
                return
            await asyncio.sleep(0.05)
        assert await item_ids() == expected

    await eventually_items([i["id"] for i in items])

    r = await api.ingest.delete(f"/v1/datasets/{dataset_id}/items/{items[0]['id']}")
    assert r.status_code == 202, r.text
    assert r.json()["item_ids"] == [items[0]["id"]]
    # An id twice, in a removal or an upsert, is a 422 naming the second.
    for path, body, loc in (
            ("items/delete", {"ids": [items[1]["id"], items[1]["id"]]}, ["body", "ids", 1]),
            ("items", {"items": [items[1], items[1]]}, ["body", "items", 1, "id"])):
        r = await api.ingest.post(f"/v1/datasets/{dataset_id}/{path}", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
        assert "appears twice" in r.json()["detail"][0]["msg"]
    # Several at once, all or none: one unknown id and nothing is removed.
    r = await api.ingest.post(f"/v1/datasets/{dataset_id}/items/delete",
                              json={"ids": [items[1]["id"], "no-such-item"]})
    assert r.status_code == 404, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "ids", 1]
    r = await api.ingest.post(f"/v1/datasets/{dataset_id}/items/delete",
                              json={"ids": [items[1]["id"], items[2]["id"]]})
    assert r.status_code == 202, r.text
    await eventually_items([items[3]["id"]])

    # A later run counts what is left, and its traces cannot name a removed item.
    later = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "after"}))["id"]
    summary = await api.eventually(f"/v1/runs/{later}", lambda s: True)
    assert summary["total_items"] == 1
    r = await api.ingest.post("/v1/traces", json={"traces": [{
        "trace_id": f"{later}-0", "run_id": later, "dataset_item_id": items[0]["id"],
        "output": "Paris", "status": "succeeded"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 0, "dataset_item_id"]
    assert "removed" in r.json()["detail"][0]["msg"]
    # The run that traced it before keeps its trace and score.
    before = await api.eventually(f"/v1/runs/{first}",
                                  lambda s: s["scores"].get("exact_match", {}).get("count") == 1
                                  and s["completed_items"] == 1)
    assert before["scores"]["exact_match"]["average"] == 1.0

    # Upserted again, an item is back.
    await api.create(f"/v1/datasets/{dataset_id}/items", {"items": [items[0]]})
    await eventually_items([items[0]["id"], items[3]["id"]])
    # Unknown dataset, unknown item: 404 naming the path.
    r = await api.ingest.delete(f"/v1/datasets/{dataset_id}/items/{items[1]['id']}")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "item_id"]
    r = await api.ingest.delete(f"/v1/datasets/nope/items/{items[0]['id']}")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "dataset_id"]
