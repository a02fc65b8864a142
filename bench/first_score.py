"""Time from a trace's POST to its scores showing in GET /v1/runs/{id}, one trace at a time, on a
running system (`make up`): `python -m bench.first_score [--traces 50]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import httpx


async def main(traces: int, ingest: str, query: str, key: str) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        specs = [{"type": "exact_match"}, {"type": "contains", "keywords": ["a"]}]
        ds = (await c.post(f"{ingest}/v1/datasets",
                           json={"name": "first-score", "evaluators": specs})).json()["id"]
        await c.post(f"{ingest}/v1/datasets/{ds}/items",
                     json={"items": [{"id": f"i{n}", "expected_output": "a"}
                                     for n in range(traces)]})
        run = (await c.post(f"{ingest}/v1/runs",
                            json={"dataset_id": ds, "name": "r"})).json()["id"]
        while (await c.get(f"{query}/v1/runs/{run}")).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        latencies = []
        for n in range(traces):
            start = time.perf_counter()
            r = await c.post(f"{ingest}/v1/traces", json={"traces": [{
                "trace_id": f"{uuid.uuid4()}", "run_id": run, "dataset_item_id": f"i{n}",
                "output": "a", "status": "succeeded"}]})
            r.raise_for_status()
            while True:
                scores = (await c.get(f"{query}/v1/runs/{run}")).json()["scores"]
                if all(scores.get(name, {}).get("count") == n + 1
                       for name in ("exact_match", "contains")):
                    break
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    p95 = latencies[max(0, int(0.95 * len(latencies)) - 1)]
    print(f"POST /v1/traces -> both scores in GET /v1/runs/{{id}}, {traces} traces one at a time: "
          f"p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms, "
          f"max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=50)
    parser.add_argument("--ingest", default="http://127.0.0.1:8000")
    parser.add_argument("--query", default="http://127.0.0.1:8001")
    args = parser.parse_args()
    key = os.environ.get("EVALSTREAM_API_KEYS", "").split(",")[0] or \
        Path(".evalstream/api-key").read_text().strip()
    asyncio.run(main(args.traces, args.ingest, args.query, key))
