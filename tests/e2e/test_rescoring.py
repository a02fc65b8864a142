"""Rescoring end to end, services as processes over a real broker and Postgres: evaluating a run
again with a new spec, and a person's verdict and its correction. (Replay from the log after an
evaluator's version changed: tests/e2e/test_replay_rebuild.py.)"""

from __future__ import annotations

import uuid

import pytest

from schemas.common import EvaluatorSpec

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

ITEMS = [  # (input, expected output, output); None output = the trace failed
    ("Capital of France?", "Paris", "Paris"),
    ("Capital of Germany?", "Berlin", "Berlin"),
    ("Capital of Italy?", "Rome", "Rome, not Paris"),
    ("Capital of Spain?", "Madrid", None),
    ("Capital of Atlantis?", None, "Atlantis"),  # no expected output: exact_match has no say
]
MENTIONS = {"type": "contains", "name": "mentions_city", "keywords": ["paris", "berlin"]}


async def _scored_run(api, evaluators, outputs=None) -> tuple[str, list[str]]:
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": {"q": q}, "expected_output": expected}
             for n, (q, expected, _) in enumerate(ITEMS)]
    dataset_id = await api.dataset_with_items(items, evaluators)
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
    outputs = outputs or [out for *_, out in ITEMS]
    await api.post_traces([
        {"trace_id": f"{run_id}-{n}", "run_id": run_id, "dataset_item_id": item["id"],
         "output": out, "status": "succeeded" if out else "failed"}
        for n, (item, out) in enumerate(zip(items, outputs, strict=True))])
    return run_id, [i["id"] for i in items]


def _score(results: dict, item_id: str, name: str, source: str = "programmatic") -> dict | None:
    item = next(i for i in results["items"] if i["dataset_item_id"] == item_id)
    return next((s for s in item["scores"] if s["name"] == name and s["source"] == source), None)


async def _done(api, request_id: str) -> dict:
    return await api.eventually(f"/v1/score-requests/{request_id}", lambda p: p["done"])


async def test_evaluate_with_a_new_spec_updates_the_summary_and_keeps_history(api):
    run_id, items = await _scored_run(api, [{"type": "exact_match"}, MENTIONS])
    before = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("mentions_city", {}).get("count") == 4
        and s["scores"].get("exact_match", {}).get("count") == 3)
    # paris/berlin: Paris 1/2, Berlin 1/2, "Rome, not Paris" 1/2, Atlantis 0
    assert before["scores"]["mentions_city"]["average"] == pytest.approx(0.375)

    new_spec = {**MENTIONS, "keywords": ["paris"]}
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate", json={"evaluators": [new_spec]})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["requested"] == 4  # every succeeded item, not the failed one
    progress = await _done(api, accepted["request_id"])
    assert (progress["requested"], progress["completed"], progress["scored"],
            progress["failed"], progress["run_id"]) == (4, 4, 4, 0, run_id)

    after = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert after["scores"]["mentions_city"]["count"] == 4  # replaced, not duplicated
    assert after["scores"]["mentions_city"]["average"] == pytest.approx(0.5)  # 1, 0, 1, 0
    assert after["scores"]["exact_match"] == before["scores"]["exact_match"]  # not requested
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()
    current = _score(results, items[0], "mentions_city")
    assert current["value"] == 1.0
    assert current["spec_hash"] == EvaluatorSpec.model_validate(new_spec).spec_hash()
    assert (current["evaluator"], current["evaluator_version"]) == ("contains", "1")

    history = (await api.query.get(
        f"/v1/runs/{run_id}/items/{items[0]}/scores/history")).json()
    mentions = next(s for s in history["scores"] if s["name"] == "mentions_city")
    assert [h["value"] for h in mentions["history"]] == [0.5, 1.0]
    assert mentions["history"][0]["spec_hash"] == EvaluatorSpec.model_validate(
        MENTIONS).spec_hash()
    assert mentions["history"][1]["request_id"] == accepted["request_id"]

    # Without a body the run's own specs apply again; an item with nothing to compare against
    # yields no exact_match score and still counts toward `done`.
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate")
    assert r.status_code == 202 and r.json()["requested"] == 4
    progress = await _done(api, r.json()["request_id"])
    assert (progress["scored"], progress["unscored"], progress["scores_recorded"]) == (4, 0, 7)
    again = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert again["scores"]["mentions_city"]["average"] == pytest.approx(0.375)
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate",
                              json={"evaluators": [{"type": "exact_match"}]})
    progress = await _done(api, r.json()["request_id"])
    assert (progress["requested"], progress["scored"], progress["unscored"]) == (4, 3, 1)


async def test_evaluate_refuses_unknown_runs_and_bad_specs(api):
    r = await api.ingest.post("/v1/runs/no-such-run/evaluate")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "run_id"]
    run_id, _ = await _scored_run(api, [{"type": "exact_match"}])
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate",
                              json={"evaluators": [{"type": "contains", "keywords": "paris"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "evaluators", 0]
    r = await api.query.get(f"/v1/score-requests/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "request_id"]


async def test_a_manual_verdict_and_its_correction(api):
    run_id, items = await _scored_run(api, [{"type": "exact_match"}])
    await api.eventually(f"/v1/runs/{run_id}",
                         lambda s: s["scores"].get("exact_match", {}).get("count") == 3)
    verdict = {"run_id": run_id, "dataset_item_id": items[2], "value": False,
               "comment": "mentions the wrong city", "created_by": "ana"}
    r = await api.ingest.post("/v1/scores", json=verdict)
    assert r.status_code == 202, r.text
    first = r.json()
    assert (first["name"], first["source"], first["value"]) == ("manual", "manual", 0.0)
    results = await api.eventually(f"/v1/runs/{run_id}/results",
                                   lambda r: _score(r, items[2], "manual", "manual"))
    manual = _score(results, items[2], "manual", "manual")
    assert (manual["display_value"], manual["comment"], manual["created_by"]) == (
        "Fail", "mentions the wrong city", "ana")

    # The correction replaces the verdict (same score id); the first stays in history.
    r = await api.ingest.post("/v1/scores", json={**verdict, "value": 1,
                                                  "comment": "Rome is right after all"})
    assert r.status_code == 202 and r.json()["score_id"] == first["score_id"]
    results = await api.eventually(
        f"/v1/runs/{run_id}/results",
        lambda r: _score(r, items[2], "manual", "manual")["value"] == 1.0)
    assert _score(results, items[2], "manual", "manual")["comment"] == "Rome is right after all"
    history = (await api.query.get(
        f"/v1/runs/{run_id}/items/{items[2]}/scores/history")).json()
    manual = next(s for s in history["scores"] if s["source"] == "manual")
    assert [(h["value"], h["created_by"]) for h in manual["history"]] == [(0.0, "ana"),
                                                                         (1.0, "ana")]

    # A verdict named like an evaluator, by trace id, sits beside the evaluator's score.
    r = await api.ingest.post("/v1/scores", json={"run_id": run_id, "trace_id": f"{run_id}-2",
                                                  "name": "exact_match", "value": True})
    assert r.status_code == 202, r.text
    results = await api.eventually(f"/v1/runs/{run_id}/results",
                                   lambda r: _score(r, items[2], "exact_match", "manual"))
    assert _score(results, items[2], "exact_match")["value"] == 0.0  # the evaluator's, kept
    assert _score(results, items[2], "exact_match", "manual")["value"] == 1.0

    # Categorical verdicts keep their label.
    r = await api.ingest.post("/v1/scores", json={
        "run_id": run_id, "dataset_item_id": items[0], "name": "tone",
        "data_type": "categorical", "value": "polite"})
    assert r.status_code == 202, r.text
    results = await api.eventually(f"/v1/runs/{run_id}/results",
                                   lambda r: _score(r, items[0], "tone", "manual"))
    tone = _score(results, items[0], "tone", "manual")
    assert (tone["data_type"], tone["string_value"], tone["display_value"]) == (
        "categorical", "polite", "polite")


async def test_a_verdict_taken_back(api):
    """A person's verdict retracted leaves the results, the summary and the pass rate, keeps its
    value in the history, and a verdict given later counts again; bad retractions name the
    field."""
    run_id, items = await _scored_run(api, [{"type": "exact_match"}])
    await api.eventually(f"/v1/runs/{run_id}",
                         lambda s: s["scores"].get("exact_match", {}).get("count") == 3)
    verdict = {"run_id": run_id, "dataset_item_id": items[1], "value": False,
               "created_by": "ana"}
    assert (await api.ingest.post("/v1/scores", json=verdict)).status_code == 202
    await api.eventually(f"/v1/runs/{run_id}", lambda s: "manual" in s["scores"])

    r = await api.ingest.post("/v1/scores/retract", json={
        "run_id": run_id, "trace_id": f"{run_id}-1", "retracted_by": "ana",
        "reason": "clicked the wrong button"})
    assert r.status_code == 202, r.text
    taken = r.json()
    assert (taken["name"], taken["dataset_item_id"]) == ("manual", items[1])
    summary = await api.eventually(f"/v1/runs/{run_id}",
                                   lambda s: "manual" not in s["scores"])
    assert summary["pass_rate"] == pytest.approx(2 / 3)  # exact_match's alone again
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()
    assert _score(results, items[1], "manual", "manual") is None
    history = (await api.query.get(
        f"/v1/runs/{run_id}/items/{items[1]}/scores/history")).json()
    manual = next(s for s in history["scores"] if s["source"] == "manual")
    assert (manual["value"], manual["retracted_by"]) == (None, "ana")
    assert manual["score_id"] == taken["score_id"]
    assert [(h["value"], h["created_by"]) for h in manual["history"]] == [(0.0, "ana")]

    # Given again, later: it counts.
    assert (await api.ingest.post("/v1/scores", json={**verdict, "value": True})
            ).status_code == 202
    summary = await api.eventually(f"/v1/runs/{run_id}",
                                   lambda s: "manual" in s["scores"])
    assert summary["scores"]["manual"] == {"average": 1.0, "pass_rate": 1.0, "count": 1}

    for body, loc in (({"dataset_item_id": "nope"}, ["body", "dataset_item_id"]),
                      ({"run_id": "no-such-run", "dataset_item_id": items[0]}, ["body", "run_id"]),
                      ({}, ["body", "dataset_item_id"]),
                      ({"dataset_item_id": items[0], "name": ""}, ["body", "name"])):
        r = await api.ingest.post("/v1/scores/retract", json={"run_id": run_id, **body})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, (body, r.text)


@pytest.mark.parametrize("body,loc", [
    ({"run_id": "no-such-run", "dataset_item_id": "x", "value": True}, ["body", "run_id"]),
    ({"dataset_item_id": "nope", "value": True}, ["body", "dataset_item_id"]),
    ({"trace_id": "nope", "value": True}, ["body", "trace_id"]),
    ({"value": True}, ["body", "dataset_item_id"]),
    ({"dataset_item_id": 0, "value": 2}, ["body", "value"]),
    ({"dataset_item_id": 0, "value": "yes"}, ["body", "value"]),
    ({"dataset_item_id": 0, "data_type": "numeric", "value": True}, ["body", "value"]),
    ({"dataset_item_id": 0, "data_type": "categorical", "value": 2}, ["body", "string_value"]),
    ({"dataset_item_id": 0, "trace_id": "other", "value": 1}, ["body", "trace_id"]),
])
async def test_bad_verdicts_name_the_field(api, body, loc):
    run_id, items = await _scored_run(api, [{"type": "exact_match"}])
    if body.get("dataset_item_id") == 0:
        body = {**body, "dataset_item_id": items[0]}
    r = await api.ingest.post("/v1/scores", json={"run_id": run_id, **body})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


async def test_verdicts_in_a_batch_all_or_none(api):
    run_id, items = await _scored_run(api, [{"type": "exact_match"}])
    verdicts = [{"run_id": run_id, "dataset_item_id": items[0], "value": True, "created_by": "ana"},
                {"run_id": run_id, "trace_id": f"{run_id}-1", "value": 0, "comment": "terse"},
                {"run_id": run_id, "dataset_item_id": items[2], "name": "tone",
                 "data_type": "categorical", "value": "polite"}]
    # One wrong verdict: a 422 naming it, and none is taken.
    bad = [*verdicts, {"run_id": run_id, "dataset_item_id": "nope", "value": True}]
    r = await api.ingest.post("/v1/scores/batch", json={"scores": bad})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "scores", 3, "dataset_item_id"]
    r = await api.ingest.post("/v1/scores/batch", json={"scores": [
        verdicts[0], {**verdicts[1], "value": 2}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "scores", 1, "value"]

    r = await api.ingest.post("/v1/scores/batch", json={"scores": verdicts})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3
    assert [s["dataset_item_id"] for s in r.json()["scores"]] == items[:3]
    def verdicts_in(results: dict) -> bool:
        listed = {i["dataset_item_id"] for i in results["items"]}
        return all(items[n] in listed and _score(results, items[n], name, "manual")
                   for n, name in ((0, "manual"), (1, "manual"), (2, "tone")))

    results = await api.eventually(f"/v1/runs/{run_id}/results", verdicts_in)
    assert _score(results, items[0], "manual", "manual")["created_by"] == "ana"
    assert (_score(results, items[1], "manual", "manual")["value"],
            _score(results, items[1], "manual", "manual")["comment"]) == (0.0, "terse")
    assert _score(results, items[2], "tone", "manual")["string_value"] == "polite"
    summary = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert summary["scores"]["manual"]["count"] == 2  # nothing of the refused batches
