"""Benchmark of the run comparison (issue 4's speed targets): two runs of 10,000 items each are
bulk-loaded into a fresh read-model schema, then the comparison's first page and its full score
comparison are timed through the query API in process (FastAPI + asyncpg, no network hop).

    .venv/bin/python -m bench.compare [--items 10000] [--repetitions 50]

Uses DATABASE_URL when set, else an embedded Postgres started (and stopped) here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import typer
from fastapi import FastAPI

from schemas.common import run_item_key, score_id
from services.database import create_pool, migrate
from services.devstack import embedded_postgres
from services.projections.api import router
from services.settings import Settings

FIRST_PAGE_TARGET_MS = 100.0
FULL_SCORES_TARGET_MS = 300.0
SCORE_NAMES = ("contains", "exact_match", "json_structure")
TABLES = ("datasets", "dataset_items", "runs", "run_items", "scores")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="evalstream-bench-compare-") as tmp, \
            embedded_postgres(Path(tmp) / "pg") as url:
        yield url


def _score_values(rng: random.Random) -> dict[str, float]:
    return {"exact_match": float(rng.random() < 0.7), "contains": rng.choice((0.0, 0.5, 1.0)),
            "json_structure": round(rng.random(), 2)}


async def load(conn: asyncpg.Connection, schema: str, n_items: int) -> tuple[str, str]:
    """A dataset of `n_items`, a baseline run over all of it and a second run that changes a
    tenth of the scores, fails 1 % of the items and misses 0.5 %; COPY, then ANALYZE."""
    rng = random.Random(4)
    now = datetime.now(UTC)
    dataset_id, run_a, run_b = (str(uuid.uuid4()) for _ in range(3))
    specs = json.dumps([{"type": name} for name in SCORE_NAMES])
    item_ids = [f"item-{i:06d}" for i in range(n_items)]
    await conn.copy_records_to_table(
        "datasets", schema_name=schema,
        columns=["id", "name", "evaluators", "created_at", "evaluators_at"],
        records=[(dataset_id, "bench", specs, now, now)])
    await conn.copy_records_to_table(
        "dataset_items", schema_name=schema,
        columns=["id", "dataset_id", "input", "expected_output", "updated_at"],
        records=[(i, dataset_id, json.dumps({"question": f"What is {i}?"}),
                  json.dumps(f"answer {i}"), now) for i in item_ids])
    await conn.copy_records_to_table(
        "runs", schema_name=schema,
        columns=["id", "dataset_id", "name", "evaluators", "total_items", "started_at"],
        records=[(run_a, dataset_id, "baseline", specs, n_items, now),
                 (run_b, dataset_id, "candidate", specs, n_items, now + timedelta(minutes=1))])
    run_items, scores = [], []
    baseline_values = {}
    for run_id in (run_a, run_b):
        for n, item_id in enumerate(item_ids):
            if run_id == run_b and n % 200 == 7:
                continue  # missing: no trace
            failed = n % 100 == 3 if run_id == run_b else n % 100 == 5
            rid = run_item_key(run_id, item_id, None)
            trace_id = f"{run_id[:8]}-{n}"
            run_items.append((
                rid, run_id, item_id, trace_id, "failed" if failed else "succeeded",
                json.dumps({"question": f"What is {item_id}?"}),
                None if failed else json.dumps(f"answer {item_id}"),
                json.dumps(f"answer {item_id}"), "timeout" if failed else None,
                rng.lognormvariate(6, 0.5), 100 + n % 50, 20 + n % 10, 0.0004,
                now, f"event-{trace_id}"))
            if failed:
                continue
            values = _score_values(rng)
            if run_id == run_a:
                baseline_values[item_id] = values
            elif rng.random() > 0.1 and item_id in baseline_values:
                values = baseline_values[item_id]
            for name, value in values.items():
                scores.append((score_id(rid, name, "programmatic"), rid, run_id, item_id,
                               trace_id, name, "programmatic", value,
                               "boolean" if name == "exact_match" else "numeric", name, "1",
                               now, f"score-{rid}-{name}"))
    await conn.copy_records_to_table(
        "run_items", schema_name=schema,
        columns=["run_item_id", "run_id", "dataset_item_id", "trace_id", "status", "input",
                 "output", "expected_output", "error", "latency_ms", "input_tokens",
                 "output_tokens", "cost", "completed_at", "event_id"],
        records=run_items)
    await conn.copy_records_to_table(
        "scores", schema_name=schema,
        columns=["score_id", "run_item_id", "run_id", "dataset_item_id", "trace_id", "name",
                 "source", "value", "data_type", "evaluator", "evaluator_version",
                 "observed_at", "event_id"],
        records=scores)
    for table in TABLES:
        # Measured first as a run that has just finished: no autovacuum pass yet.
        await conn.execute(f'ALTER TABLE "{schema}".{table} SET (autovacuum_enabled = false)')
        await conn.execute(f'ANALYZE "{schema}".{table}')
    print(f"loaded 2 runs x {n_items:,} items: {len(run_items):,} run items, "
          f"{len(scores):,} scores")
    return run_a, run_b


async def timed(client: httpx.AsyncClient, path: str, repetitions: int) -> list[float]:
    for _ in range(3):  # warm-up: connection pool, plans, caches
        r = await client.get(path)
        r.raise_for_status()
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter()
        r = await client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return samples


def _quantile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q * 100) - 1]


async def measure(client: httpx.AsyncClient, runs: str, repetitions: int, state: str) -> None:
    cases = [
        ("first page: runs + scores + first 50 items", f"/v1/compare?{runs}",
         FIRST_PAGE_TARGET_MS),
        ("first page of items only", f"/v1/compare?{runs}&include=items", FIRST_PAGE_TARGET_MS),
        ("first page of regressions", f"/v1/compare?{runs}&include=items&filter=regressions",
         FIRST_PAGE_TARGET_MS),
        ("first page of status changes",
         f"/v1/compare?{runs}&include=items&filter=status_changed", FIRST_PAGE_TARGET_MS),
        ("full score comparison (runs + scores)", f"/v1/compare?{runs}&include=runs,scores",
         FULL_SCORES_TARGET_MS),
        ("a page of 1,000 items (no target)", f"/v1/compare?{runs}&include=items&limit=1000",
         None),
        ("run results sorted by a score (no target)",
         f"/v1/runs/{runs.split('=')[1].split(',')[0]}/results?sort=score:contains&order=desc",
         None),
    ]
    print(f"\n{state}\n{'request':<44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'target':>8} {'p95/target':>10}")
    for label, path, target in cases:
        samples = await timed(client, path, repetitions)
        p50, p95 = statistics.median(samples), _quantile(samples, 0.95)
        goal = f"{target:.0f}" if target else "-"
        ratio = f"{p95 / target:.2f}" if target else "-"
        print(f"{label:<44} {p50:8.1f} {p95:8.1f} {max(samples):8.1f} {goal:>8} {ratio:>10}")


async def bench(items: int, repetitions: int) -> None:
    with postgres() as dsn:
        dsn = dsn.replace("postgresql+asyncpg://", "postgresql://")
        schema = f"bench_compare_{uuid.uuid4().hex[:8]}"
        await migrate(dsn, "read_model", schema)
        admin = await asyncpg.connect(dsn)
        pool = None
        try:
            run_a, run_b = await load(admin, schema, items)
            settings = Settings(DATABASE_URL=dsn, read_model_schema=schema)
            app = FastAPI()
            app.include_router(router)
            app.state.settings = settings
            app.state.pool = pool = await create_pool(dsn, schema, max_size=2)
            runs = f"runs={run_a},{run_b}&baseline={run_a}"
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                await measure(client, runs, repetitions,
                              "just loaded (statistics fresh, not yet vacuumed)")
                # What autovacuum does within about a minute of a run's last scores: it marks
                # the pages all-visible, so the index-only scans stop visiting the table.
                for table in TABLES:
                    await admin.execute(f'VACUUM ANALYZE "{schema}".{table}')
                await measure(client, runs, repetitions, "after autovacuum's pass (VACUUM)")
                body = (await client.get(f"/v1/compare?{runs}&include=scores")).json()
                print("candidate vs baseline: " + "; ".join(
                    f"{s['name']}: {s['runs'][1]['improvements']} improved, "
                    f"{s['runs'][1]['regressions']} regressed" for s in body["scores"]))
            load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"({repetitions} timed requests per line after 3 warm-ups; {items:,} items per "
                  f"run; in-process ASGI client, so no network time is included; {os.cpu_count()}"
                  f" CPUs, load average {load_average})")
        finally:
            if pool is not None:
                await pool.close()
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()


def main(items: int = typer.Option(10_000, help="Items per run."),
         repetitions: int = typer.Option(50, help="Timed requests per case.")) -> None:
    asyncio.run(bench(items, repetitions))


if __name__ == "__main__":
    typer.run(main)
