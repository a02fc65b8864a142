"""Traces posted without a run (production traffic) through the real processes: ingest → broker
→ evaluator → projections → the query API's /v1/traces, /v1/traces/{id} and /v1/monitoring, and
`evalstream trace` / `evalstream monitor` reading them. With no scoring rule they are listed
unscored (rule-driven scores: test_scoring_rules_e2e.py); `evalstream collect` turns the ones a
rule failed into a dataset's items."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_production_traces_are_listed_counted_and_shown(api, migrated):
    tag = uuid.uuid4().hex[:8]
    since = datetime.now(UTC) - timedelta(minutes=1)
    traces = [{"trace_id": f"{tag}-{n}", "output": f"answer {n}",
               "status": "failed" if n == 2 else "succeeded",
               "error": "timeout" if n == 2 else None, "latency_ms": 10.0 * (n + 1),
               "metadata": {"suite": tag, "model": "a" if n else "b"}} for n in range(3)]
    await api.post_traces(traces)
    mine = urlencode({"by": "trace.suite", "group": tag, "since": since.isoformat()})

    listed = await api.eventually(f"/v1/traces?{mine}", lambda p: p["total"] == 3)
    assert {i["trace_id"] for i in listed["items"]} == {t["trace_id"] for t in traces}
    assert all(i["scores"] == [] and i["dataset_item_id"] is None for i in listed["items"])
    times = [i["completed_at"] for i in listed["items"]]
    assert times == sorted(times, reverse=True)

    counted = (await api.query.get(f"/v1/monitoring?{mine}&interval=minute")).json()
    assert {k: counted["totals"][k] for k in ("traces", "succeeded", "failed",
                                              "scored_traces", "pass_rate")} == {
        "traces": 3, "succeeded": 2, "failed": 1, "scored_traces": 0, "pass_rate": None}
    assert sum(b["traces"] for b in counted["buckets"]) == 3

    one = (await api.query.get(f"/v1/traces/{tag}-2")).json()
    assert (one["run_id"], one["status"], one["error"], one["metadata"]) == (
        None, "failed", "timeout", traces[2]["metadata"])
    assert (await api.query.get(f"/v1/traces/{tag}-none")).status_code == 404

    env = settings_env(migrated)
    shown = await evalstream_command(env, "trace", f"{tag}-0")
    assert shown.startswith(f"trace {tag}-0, outside any run") and "no score" in shown
    monitored = json.loads(await evalstream_command(
        env, "monitor", "--since", "10m", "--interval", "minute", "--by", "trace.suite",
        "--group", tag, "--json"))
    assert monitored["totals"]["traces"] == 3
    table = await evalstream_command(env, "monitor", "--since", "10m", "--by", "trace.model",
                                     "--group", "a")
    assert table.splitlines()[-1].split()[0] == "total"


async def test_failed_production_traces_become_a_datasets_items(api, migrated):
    """`evalstream collect`: the traces a rule failed, with their input and metadata, as items
    of a dataset (id = trace id, so collecting again updates them)."""
    tag = uuid.uuid4().hex[:8]
    score = f"caps_{tag}"
    r = await api.ingest.put(f"/v1/scoring-rules/collect-{tag}", json={
        "evaluators": [{"type": "regex", "pattern": "^[A-Z]", "name": score}],
        "where": {"suite": tag}})
    assert r.status_code == 200, r.text
    try:
        outputs = ["Paris", "paris", "rome", "Rome"]
        await api.post_traces([{"trace_id": f"{tag}-{n}", "input": {"q": n}, "output": out,
                                "status": "succeeded", "metadata": {"suite": tag}}
                               for n, out in enumerate(outputs)])
        for n in range(len(outputs)):
            await api.eventually(f"/v1/traces/{tag}-{n}", lambda t: t["scores"])
    finally:
        assert (await api.ingest.delete(f"/v1/scoring-rules/collect-{tag}")).status_code == 202
    dataset_id = await api.dataset_with_items([{"id": "kept", "input": "x"}], name=f"ds-{tag}")
    env = settings_env(migrated) | {
        "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{migrated.ingest_port}",
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"}
    args = ["collect", f"ds-{tag}", "--filter", "failed", "--score", score, "--by",
            "trace.suite", "--group", tag, "--since", "1h", "--expected", "output"]
    assert f"dataset {dataset_id}: 2 trace(s) added as items" in await evalstream_command(
        env, *args)
    await evalstream_command(env, *args)  # again: the same items, updated
    items = await api.eventually(f"/v1/datasets/{dataset_id}/items",
                                 lambda p: p["total"] == 3)
    got = {i["id"]: (i["input"], i["expected_output"], i["metadata"]) for i in items["items"]}
    assert got == {
        "kept": ("x", None, None),
        f"{tag}-1": ({"q": 1}, "paris", {"suite": tag, "source_trace_id": f"{tag}-1"}),
        f"{tag}-2": ({"q": 2}, "rome", {"suite": tag, "source_trace_id": f"{tag}-2"})}
    # A trace named by id that does not exist stops it, naming the trace.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "collect", dataset_id, "--trace", f"{tag}-none",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and f"trace {tag}-none not found" in err.decode()
