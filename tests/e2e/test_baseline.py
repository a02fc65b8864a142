"""A dataset's baseline run, end to end: chosen through the ingest API, shown with the dataset,
used by a comparison of one run and by `evalstream check --baseline pinned`; wrong choices name
the field."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.e2e.test_check import _check

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_a_pinned_baseline_is_what_one_run_is_compared_with(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": city, "metadata": {"n": n}}
             for n, city in enumerate(["Paris", "Berlin", "Rome"])]
    dataset_id = await api.dataset_with_items(items)

    async def run(name: str, outputs: list[str]) -> str:
        run_id = await api.run_with_outputs(dataset_id, items, outputs, name)
        await api.eventually(f"/v1/runs/{run_id}", lambda s: s["items_with_scores"] == 3)
        return run_id

    release = await run("release", ["Paris", "Berlin", "Rome"])
    candidate = await run("candidate", ["Paris", "Bonn", "Rome"])
    # Without a baseline run, one run alone cannot be compared.
    r = await api.query.get("/v1/compare", params={"runs": candidate})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "runs"]

    r = await api.ingest.put(f"/v1/datasets/{dataset_id}/baseline", json={"run_id": release})
    assert r.status_code == 200, r.text
    assert r.json()["baseline_run_id"] == release
    await api.eventually(f"/v1/datasets/{dataset_id}",
                         lambda d: d["baseline_run_id"] == release)

    body = await api.eventually(f"/v1/compare?runs={candidate}&include=scores",
                                lambda b: "scores" in b)
    assert body["baseline"] == release and body["run_ids"] == [release, candidate]
    exact = next(s for s in body["scores"] if s["name"] == "exact_match")
    assert exact["runs"][1]["regressions"] == 1
    groups = (await api.query.get("/v1/compare/breakdown", params={
        "runs": candidate, "by": "item.n"})).json()
    assert groups["baseline"] == release and len(groups["groups"]) == 3
    # two runs given: the pinned one is their baseline, wherever it is listed
    body = (await api.query.get("/v1/compare", params={"runs": f"{candidate},{release}",
                                                       "include": "runs"})).json()
    assert body["baseline"] == release

    code, out, err = await _check(migrated, candidate, "--baseline", "pinned", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["baseline"] == release
    assert [(c["what"], c["value"]) for c in report["checks"]] == [
        ("exact_match items regressed", 1)]
    # the baseline itself has nothing to be compared with
    code, out, err = await _check(migrated, release, "--baseline", "pinned")
    assert code == 2 and "baseline" in err

    # Undone: one run alone cannot be compared again.
    r = await api.ingest.put(f"/v1/datasets/{dataset_id}/baseline", json={"run_id": None})
    assert r.status_code == 200 and r.json()["baseline_run_id"] is None
    await api.eventually(f"/v1/datasets/{dataset_id}", lambda d: d["baseline_run_id"] is None)
    assert (await api.query.get("/v1/compare", params={"runs": candidate})).status_code == 422


async def test_wrong_baselines_name_the_field(api):
    prefix = uuid.uuid4().hex[:8]
    dataset_id = await api.dataset_with_items([{"id": f"{prefix}-0", "expected_output": "a"}])
    other = await api.dataset_with_items([{"id": f"{prefix}-1", "expected_output": "a"}])
    foreign = (await api.create("/v1/runs", {"dataset_id": other, "name": "x"}))["id"]
    gone = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "y"}))["id"]
    assert (await api.ingest.delete(f"/v1/runs/{gone}")).status_code == 202
    for path, body, status, loc in (
            (f"/v1/datasets/{dataset_id}/baseline", {"run_id": foreign}, 422, ["body", "run_id"]),
            (f"/v1/datasets/{dataset_id}/baseline", {"run_id": "nope"}, 422, ["body", "run_id"]),
            (f"/v1/datasets/{dataset_id}/baseline", {"run_id": gone}, 422, ["body", "run_id"]),
            (f"/v1/datasets/{dataset_id}/baseline", {}, 422, ["body", "run_id"]),
            ("/v1/datasets/nope/baseline", {"run_id": None}, 404, ["path", "dataset_id"])):
        r = await api.ingest.put(path, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"][0]["loc"] == loc, (body, r.text)
