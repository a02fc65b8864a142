"""What each stage can do alone, in this process on one core, with no broker in between: the
evaluator's decode → score → encode, and the projections' apply_batch on a scratch read-model
schema. Set beside the end-to-end figure, they show which stage caps the pipeline."""

from __future__ import annotations

import time

import psutil

from bench.baseline import Rate
from bench.sampling import tree_usage
from bench.workload import SCORES_PER_TRACE, scoring_case
from schemas.common import utcnow
from schemas.envelope import unwrap, wrap
from schemas.traces import TraceCompleted
from services.database import create_pool, migrate
from services.evaluator.scoring import score_batch
from services.ingest.catalog import SOURCE, trace_event_id
from services.projections.read_models import apply_batch


def trace_records(tag: str, run_id: str, n: int) -> list[tuple[list, bytes]]:
    """(headers, body) of `n` TraceCompleted records, as ingest writes them to the broker."""
    now = utcnow()
    records = []
    for i in range(n):
        case = scoring_case(tag, run_id, i)
        event = TraceCompleted(
            trace_id=case.trace_id, run_id=run_id, dataset_id="bench",
            dataset_item_id=case.dataset_item_id, input=case.input, output=case.output,
            expected_output=case.expected_output, evaluators=case.evaluators,
            status="succeeded", latency_ms=100.0, cost=0.0001, completed_at=now)
        env = wrap(event, source=SOURCE, key=run_id, id=trace_event_id(event), time=now)
        records.append((env.headers(), env.body()))
    return records


def evaluator_stage(tag: str, run_id: str, n: int = 20_000) -> dict:
    """Traces per second through unwrap + score_batch + the score records' headers and body."""
    records = trace_records(tag, run_id, n)
    started = time.perf_counter()
    for start in range(0, n, 2000):
        envelopes = [unwrap(h, b) for h, b in records[start:start + 2000]]
        for env in score_batch(envelopes):
            env.headers()
            env.body()
    rate = Rate(n, time.perf_counter() - started)
    return rate.as_dict() | {"python_us_per_trace": round(rate.seconds / n * 1e6, 1)}


async def projection_stage(dsn: str, schema: str, tag: str, run_id: str,
                           n: int = 20_000, batch_events: int = 2000,
                           postgres_pid: int | None = None) -> dict:
    """Traces per second through apply_batch (the trace and its scores, decoded from records as
    the projections consumer sees them), `batch_events` events per transaction, and the CPU it
    took on each side: this process (Python) and the Postgres server (SQL)."""
    await migrate(dsn, "read_model", schema)
    traces = [unwrap(h, b) for h, b in trace_records(tag, run_id, n)]
    events = []
    per_batch = batch_events // (1 + SCORES_PER_TRACE)
    for start in range(0, n, per_batch):
        chunk = traces[start:start + per_batch]
        scores = [unwrap(e.headers(), e.body()) for e in score_batch(chunk)]
        events.append(chunk + scores)
    pool = await create_pool(dsn, schema, max_size=2)
    master = psutil.Process(postgres_pid) if postgres_pid else None
    try:
        pg_before = tree_usage(master)[0] if master else 0.0
        cpu_before, started = time.process_time(), time.perf_counter()
        async with pool.acquire() as conn:
            for batch in events:
                async with conn.transaction():
                    await apply_batch(conn, batch)
        rate = Rate(n, time.perf_counter() - started)
        python_cpu = time.process_time() - cpu_before
        out = rate.as_dict() | {"python_us_per_trace": round(python_cpu / n * 1e6, 1)}
        if master:
            out["postgres_us_per_trace"] = round((tree_usage(master)[0] - pg_before) / n * 1e6, 1)
        return out
    finally:
        await pool.close()
