"""Traces posted without a run (production traffic) through the real processes: ingest → broker
→ evaluator → projections → the query API's /v1/traces, /v1/traces/{id} and /v1/monitoring, and
`evalstream trace` / `evalstream monitor` reading them. Without an expected output the default
spec (exact_match) yields no score, so they are listed unscored; rule-driven scores are the
ingest side's test."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from tests.conftest import evalstream_command, settings_env

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
