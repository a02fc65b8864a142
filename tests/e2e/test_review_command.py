"""`evalstream review` as a person uses it, its answers typed on stdin, against the running
services: verdicts with comments, an answer it does not know, a skip, going back to change a
verdict, quitting — then the run's summary and results hold exactly those verdicts, and a second
review offers only the items still awaiting one."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from tests.conftest import ROOT, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _review(settings, run_id: str, answers: str, *args: str) -> str:
    env = {**settings_env(settings),
           "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{settings.ingest_port}",
           "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{settings.query_port}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "review", run_id, *args, env=env, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(answers.encode()), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_review_a_run_in_the_terminal(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": f"question {n}", "expected_output": str(n)}
             for n in range(5)]
    dataset_id = await api.dataset_with_items(items)
    run_id = await api.run_with_outputs(dataset_id, items, ["0", "1", "x", "3", "y"])
    await api.eventually(f"/v1/runs/{run_id}/scoring", lambda s: s["scored"])

    # item 0: correct; 1: incorrect, commented; 2: "maybe" is asked again, then skipped;
    # 3: incorrect, then back to 3 and correct after all; 4: quit.
    out = await _review(migrated, run_id,
                        "y\n\nn\nsays 1, wants one\nmaybe\ns\nn\n\nb\ny\nchecked again\nq\n",
                        "--by", "ana")
    assert f"run {run_id}: 5 item(s) to review (awaiting)" in out
    assert "output:     x" in out and "exact_match Fail" in out
    assert "3 verdict(s) posted: 2 correct, 1 incorrect; 2 skipped (quit)" in out

    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("manual", {}).get("count") == 3)
    assert summary["scores"]["manual"]["pass_rate"] == pytest.approx(2 / 3)
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    verdicts = {i["dataset_item_id"][-1]: (s["value"], s["comment"], s["created_by"])
                for i in results for s in i["scores"] if s["name"] == "manual"}
    assert verdicts == {"0": (1, None, "ana"), "1": (0, "says 1, wants one", "ana"),
                        "3": (1, "checked again", "ana")}

    # Again: only the two items with no verdict are offered; the input ends (as if quit).
    out = await _review(migrated, run_id, "n\nwrong\n")
    assert "2 item(s) to review (awaiting)" in out
    assert f"item {prefix}-2 " in out and f"item {prefix}-4 " in out
    assert "1 verdict(s) posted: 0 correct, 1 incorrect; 1 skipped (quit)" in out

    # A rubric: each verdict one of its labels (a categorical score), by number or by name.
    out = await _review(migrated, run_id, "2\nclose enough\nWRONG\n\nok?\n1\n\nq\n",
                        "--name", "quality", "--labels", "correct,partial,wrong", "--by", "bo")
    assert "1 correct · 2 partial · 3 wrong · s skip · b back · q quit" in out
    assert "3 verdict(s) posted: 1 correct, 1 partial, 1 wrong; 1 skipped (quit)" in out
    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("quality", {}).get("count") == 3)
    assert summary["scores"]["quality"]["labels"] == {"correct": 1, "partial": 1, "wrong": 1}
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    assert {i["dataset_item_id"][-1]: (s["string_value"], s["comment"]) for i in results
            for s in i["scores"] if s["name"] == "quality"} == {
        "0": ("partial", "close enough"), "1": ("wrong", None), "2": ("correct", None)}
