"""`evalstream rescore` against the running services: a run's items scored again with a spec file
(the agent not run again), waited for until every case is done; the new values replace the old,
which stay in the history, and a run that does not exist stops it with the API's answer."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


def _env(settings) -> dict[str, str]:
    return {**settings_env(settings),
            "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{settings.ingest_port}",
            "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{settings.query_port}"}


async def test_rescore_a_run_with_new_specs_and_wait_for_it(api, migrated, tmp_path):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": f"q{n}", "expected_output": "Paris"}
             for n in range(4)]
    dataset_id = await api.dataset_with_items(items)
    run_id = await api.run_with_outputs(dataset_id, items, ["Paris", "paris!", "Pariss", "Rome"])
    await api.eventually(f"/v1/runs/{run_id}/scoring", lambda s: s["scored"])

    specs = tmp_path / "specs.yaml"
    specs.write_text("- type: exact_match\n- type: similarity\n  pass_threshold: 0.8\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "rescore", run_id, "--evaluators", str(specs),
        env=_env(migrated), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    request_id = out.decode().strip()
    assert f"request {request_id}: 4 case(s) of run {run_id} with exact_match, similarity" \
        in err.decode()
    assert "done: 4 scored, 0 with an evaluator failure, 0 with nothing to score" in err.decode()

    # Done means visible: no waiting here.
    summary = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert summary["scores"]["similarity"]["count"] == 4
    assert summary["scores"]["similarity"]["pass_rate"] == 0.75  # all but "Rome"
    history = (await api.query.get(
        f"/v1/runs/{run_id}/items/{prefix}-0/scores/history")).json()
    exact = next(s for s in history["scores"] if s["name"] == "exact_match")
    assert len(exact["history"]) == 2 and exact["request_id"] == request_id

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "rescore", f"{prefix}-no-such-run",
        env=_env(migrated), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert f"rescore stopped: POST /v1/runs/{prefix}-no-such-run/evaluate: HTTP 404" \
        in err.decode()


async def test_rescore_without_waiting(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-0", "input": "q", "expected_output": "Paris"}]
    dataset_id = await api.dataset_with_items(items)
    run_id = await api.run_with_outputs(dataset_id, items, ["Paris"])
    request_id = (await evalstream_command(_env(migrated), "rescore", run_id,
                                           "--wait", "0")).strip()
    progress = await api.eventually(f"/v1/score-requests/{request_id}", lambda p: p["done"])
    assert progress["requested"] == 1 and progress["scored"] == 1


async def test_rescore_only_the_items_an_evaluator_failed_on(api, migrated, tmp_path):
    """A plugin's evaluator (tests/e2e/plugin_evaluators.py: `tone`) raises on one output; only
    that item is scored again, with a spec that does not fail, and its failure is gone."""
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": "Paris"} for n in range(3)]
    dataset_id = await api.dataset_with_items(items, [{"type": "exact_match"},
                                                      {"type": "tone"}])
    run_id = await api.run_with_outputs(dataset_id, items, ["Paris", "boom", "Rome"])
    await api.eventually(f"/v1/runs/{run_id}/scoring", lambda s: s["scored"])
    page = (await api.query.get(f"/v1/runs/{run_id}/results",
                                params={"filter": "evaluator_failed"})).json()
    assert [i["dataset_item_id"] for i in page["items"]] == [f"{prefix}-1"]

    # A plugin's type in the file: the client has not the plugin, ingest checks it.
    specs = tmp_path / "specs.yaml"
    specs.write_text("- type: exact_match\n- type: word_limit\n  name: tone\n  max_words: 3\n")
    client_env = {k: v for k, v in _env(migrated).items()
                  if k != "EVALSTREAM_EVALUATOR_PLUGINS"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "rescore", run_id, "--only", "evaluator-failures",
        "--evaluators", str(specs), env=client_env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert f"1 case(s) of run {run_id} with exact_match, word_limit" in err.decode()
    results = {i["dataset_item_id"]: i for i in (await api.query.get(
        f"/v1/runs/{run_id}/results")).json()["items"]}
    assert results[f"{prefix}-1"]["evaluation_failures"] == []
    assert [(s["name"], s["evaluator"], s["value"]) for s in results[f"{prefix}-1"]["scores"]
            ] == [("exact_match", "exact_match", 0.0), ("tone", "word_limit", 1.0)]
    # The others were not asked again: each score has its first value alone.
    for n in (0, 2):
        history = (await api.query.get(
            f"/v1/runs/{run_id}/items/{prefix}-{n}/scores/history")).json()["scores"]
        assert {s["name"]: len(s["history"]) for s in history} == {"exact_match": 1, "tone": 1}

    # Nothing left to pick: no request at all.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "rescore", run_id, "--only", "evaluator-failures",
        env=_env(migrated), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out == b""
    assert "nothing to rescore" in err.decode()
    # The API names an id the run has no succeeded trace of.
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate",
                              json={"dataset_item_ids": [f"{prefix}-0", "nope"]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "dataset_item_ids", 1]
    assert "'nope' has no succeeded trace" in r.json()["detail"][0]["msg"]
