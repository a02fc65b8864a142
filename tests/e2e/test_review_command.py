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


async def test_people_give_verdicts_on_production_traces(api, migrated):
    """Traces outside runs: a verdict by trace id alone (before or after the trace arrives),
    taken back, and `evalstream review --outside-runs --since` offering the newest first."""
    from datetime import UTC, datetime

    tag = uuid.uuid4().hex[:8]
    name = f"ok_{tag}"
    # A verdict may come before its trace: the read models join them whatever the order.
    early = await api.create("/v1/scores", {"trace_id": f"{tag}-early", "name": name,
                                            "value": False, "comment": "rude"}, status=202)
    assert early["run_id"] is None and early["source"] == "manual"
    since = datetime.now(UTC).isoformat()
    await api.post_traces([{"trace_id": f"{tag}-{n}", "output": f"answer {n}",
                            "status": "succeeded", "metadata": {"suite": tag}}
                           for n in range(3)] + [
        {"trace_id": f"{tag}-early", "output": "go away", "status": "succeeded"}])
    trace = await api.eventually(f"/v1/traces/{tag}-early", lambda t: t["scores"])
    assert [(s["name"], s["value"], s["comment"]) for s in trace["scores"]] == [
        (name, 0.0, "rude")]
    # A dataset item without a run: refused, naming the field.
    r = await api.ingest.post("/v1/scores", json={"trace_id": "x", "dataset_item_id": "i",
                                                  "value": True})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "trace_id"]

    # The review offers the traces since then awaiting a verdict of the name, newest first:
    # the three (posted after "early" in one call, so listed before it or at its time).
    env = {**settings_env(migrated),
           "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{migrated.ingest_port}",
           "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "review", "--outside-runs", "--since", since,
        "--name", name, "--by", "bo", env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"y\n\nn\nvague\nq\n"), 60)
    assert proc.returncode == 0, err.decode()
    out = out.decode()
    assert f"traces outside runs since {since}: 3 item(s) to review (awaiting)" in out
    assert "2 verdict(s) posted: 1 correct, 1 incorrect; 1 skipped (quit)" in out
    listed = await api.eventually(
        f"/v1/traces?by=trace.suite&group={tag}&score={name}&filter=unscored",
        lambda p: p["total"] == 1)
    judged = (await api.query.get(
        f"/v1/traces?by=trace.suite&group={tag}&limit=10")).json()["items"]
    verdicts = sorted((s["value"], s["comment"], s["created_by"])
                      for i in judged for s in i["scores"] if s["name"] == name)
    assert verdicts == [(0.0, "vague", "bo"), (1.0, None, "bo")]
    assert listed["items"][0]["trace_id"] not in {i["trace_id"] for i in judged
                                                    if i["scores"]}

    # Taken back: it leaves the trace's scores.
    r = await api.ingest.post("/v1/scores/retract", json={"trace_id": f"{tag}-early",
                                                          "name": name, "retracted_by": "bo"})
    assert r.status_code == 202, r.text
    await api.eventually(f"/v1/traces/{tag}-early", lambda t: t["scores"] == [])
