"""Categorical scores (a person's label: "polite", "rude") through the real services: counted per
label in summaries, comparisons and the dashboard views, and kept out of averages, pass rates and
improvements, which only boolean and numeric scores have."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_categorical_verdicts_are_counted_per_label_not_averaged(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": city}
             for n, city in enumerate(["Paris", "Berlin", "Rome"])]
    dataset_id = await api.dataset_with_items(items)
    runs = {}
    outputs_by_run = {"A": ["Paris", "Munich", "Rome"], "B": ["Paris", "Berlin", "Rome"]}
    for key, outputs in outputs_by_run.items():
        run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": key}))["id"]
        runs[key] = run_id
        await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                                "dataset_item_id": item["id"], "output": out,
                                "status": "succeeded"}
                               for n, (item, out) in enumerate(zip(items, outputs, strict=True))])
    labels = {"A": ["polite", "rude", "polite"], "B": ["rude", "rude"]}
    for key, given in labels.items():
        for item, label in zip(items, given, strict=False):
            await api.create("/v1/scores", {
                "run_id": runs[key], "dataset_item_id": item["id"], "name": "tone",
                "data_type": "categorical", "value": label}, status=202)

    summary = await api.eventually(
        f"/v1/runs/{runs['A']}",
        lambda s: s["scores"].get("tone", {}).get("count") == 3
        and s["scores"].get("exact_match", {}).get("count") == 3)
    assert summary["scores"]["tone"] == {"average": None, "pass_rate": None, "count": 3,
                                         "labels": {"polite": 2, "rude": 1}}
    assert summary["scores"]["exact_match"] == {"average": pytest.approx(2 / 3),
                                                "pass_rate": pytest.approx(2 / 3), "count": 3}
    assert "labels" not in summary["scores"]["exact_match"]
    # The run's pass rate is that of its exact matches: labels neither pass nor fail.
    assert summary["pass_rate"] == pytest.approx(2 / 3)
    await api.eventually(f"/v1/runs/{runs['B']}",
                         lambda s: s["scores"].get("tone", {}).get("count") == 2)

    results = (await api.query.get(f"/v1/runs/{runs['A']}/results",
                                   params={"sort": "score:tone"})).json()["items"]
    tones = [next(s for s in r["scores"] if s["name"] == "tone") for r in results]
    assert [(t["display_value"], t["passed"]) for t in tones] == [
        ("polite", None), ("polite", None), ("rude", None)]  # sorted by label
    for outcome in ("passed", "failed"):
        page = (await api.query.get(f"/v1/runs/{runs['A']}/results",
                                    params={"filter": outcome, "score": "tone"})).json()
        assert page["total"] == 0, page

    compared = (await api.query.get("/v1/compare", params={
        "runs": f"{runs['A']},{runs['B']}"})).json()
    tone = next(s for s in compared["scores"] if s["name"] == "tone")
    assert [(r["count"], r["labels"], r["average"]) for r in tone["runs"]] == [
        (3, {"polite": 2, "rude": 1}, None), (2, {"rude": 2}, None)]
    assert (tone["runs"][1]["improvements"], tone["runs"][1]["regressions"]) == (0, 0)
    exact = next(s for s in compared["scores"] if s["name"] == "exact_match")
    assert exact["runs"][1]["improvements"] == 1  # Munich → Berlin
    first = next(i for i in compared["items"]["items"] if i["dataset_item_id"] == items[0]["id"])
    assert [r["scores"]["tone"] for r in first["runs"]] == ["polite", "rude"]
    assert all("tone" not in r["improved"] + r["regressed"] for r in first["runs"])

    conn = await asyncpg.connect(migrated.dsn)
    try:
        row = await conn.fetchrow(
            f'SELECT average, count, labels::text FROM "{migrated.dashboard_schema}".score_summary'
            " WHERE run_id = $1 AND score_name = 'tone'", runs["A"])
    finally:
        await conn.close()
    assert (row["average"], row["count"]) == (None, 3)
    assert row["labels"] == '{"rude": 1, "polite": 2}'
