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
