"""Replay and rebuild rates on a log of 1,000,000 events (`python -m bench.replay_rebuild`).

Writes a log the way the services would have (catalog events, N finished traces over a few runs
with `make bench`'s three evaluators and outputs, the evaluator's scores for each, made by the
evaluator's own `score_batch`, and for a share of them (`--rescored`) the scores of a later
rescoring, which displace the first ones, as `make bench`'s replay does), then times
`evalstream replay` (read every trace back, request every run item's rescoring) and
`evalstream projections rebuild` (every read model from offset zero into a fresh schema, then
the switch). Starts a broker and Postgres unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are
given; topics and schemas are unique to the run. Prints the rates; asserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
import typer

from bench.workload import SPECS, item, output
from schemas.catalog import DatasetCreated, DatasetItem, DatasetItemsUpserted, RunStarted
from schemas.common import utcnow
from schemas.envelope import wrap
from schemas.traces import ScoreRequested, TraceCompleted
from services.cli import tune_gc
from services.database import migrate_all
from services.devstack import embedded_postgres, tansu_broker
from services.evaluator.scoring import score_batch
from services.messaging import EventPublisher, ensure_topics
from services.projections.rebuild import rebuild
from services.replay import ReplayFilter, replay
from services.settings import Settings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

CHUNK = 5000


def _settings(bootstrap: str, dsn: str, tag: str) -> Settings:
    prefix = f"rr{tag}"
    return Settings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, DATABASE_URL=dsn,
        topics={"catalog": f"{prefix}.catalog", "traces": f"{prefix}.traces",
                "score_requests": f"{prefix}.score-requests", "scores": f"{prefix}.scores",
                "dead_letter": f"{prefix}.dead-letter"},
        catalog_schema=f"rr_catalog_{tag}", read_model_schema=f"rr_read_model_{tag}",
        dashboard_schema=f"rr_dashboard_{tag}", evaluator_group=f"rr-evaluator-{tag}",
        projections_group=f"rr-projections-{tag}", log_level="WARNING")


async def write_log(settings: Settings, traces: int, runs: int,
                    rescored: float = 0.0) -> dict[str, int]:
    """Catalog events, `traces` TraceCompleted over `runs` runs of one dataset, their scores,
    and for the first `rescored` share of them the scores of one later rescoring; returns how
    many events of each kind went to the log."""
    publisher = EventPublisher(settings, "bench")
    await publisher.start()
    counts = {"catalog": 0, "traces": 0, "scores": 0, "rescores": 0}
    try:
        per_run = -(-traces // runs)
        dataset_id, now = str(uuid.uuid4()), utcnow()
        catalog = [wrap(DatasetCreated(dataset_id=dataset_id, name="bench", evaluators=SPECS,
                                       created_at=now), source="bench", key=dataset_id)]
        for start in range(0, per_run, 1000):
            items = tuple(DatasetItem.model_validate(item("rr", n))
                          for n in range(start, min(start + 1000, per_run)))
            catalog.append(wrap(DatasetItemsUpserted(dataset_id=dataset_id, items=items,
                                                     upserted_at=now), source="bench",
                                key=dataset_id))
        run_ids = [str(uuid.uuid4()) for _ in range(runs)]
        catalog += [wrap(RunStarted(run_id=r, dataset_id=dataset_id, name=f"run {k}",
                                    evaluators=SPECS, total_items=per_run, started_at=now),
                         source="bench", key=dataset_id) for k, r in enumerate(run_ids)]
        counts["catalog"] = await publisher.publish(settings.topics.catalog, catalog)
        request_id, rescoring = str(uuid.uuid4()), []
        for start in range(0, traces, CHUNK):
            batch = []
            for n in range(start, min(start + CHUNK, traces)):
                run_id, i = run_ids[n // per_run], n % per_run
                it = item("rr", i)
                trace = TraceCompleted(
                    trace_id=f"t{n}", run_id=run_id, dataset_id=dataset_id,
                    dataset_item_id=it["id"], input=it["input"], output=output(i),
                    expected_output=it["expected_output"], evaluators=SPECS, status="succeeded",
                    latency_ms=float(n % 900), usage={"input_tokens": 20, "output_tokens": 8},
                    cost=0.0001, completed_at=utcnow())
                batch.append(wrap(trace, source="bench", key=trace.run_item_id,
                                  time=trace.completed_at))
            counts["traces"] += await publisher.publish(settings.topics.traces, batch)
            counts["scores"] += await publisher.publish(settings.topics.scores,
                                                        score_batch(batch))
            rescoring += batch[:max(0, round(rescored * traces) - start)]
        # The rescoring's requests go to their own topic, which no read model is built from;
        # its scores come later than every first score, as a replay's do.
        requested_at = utcnow()
        for start in range(0, len(rescoring), CHUNK):
            requests = [wrap(ScoreRequested(**env.event.model_dump(include=set(
                ScoreRequested.model_fields) - {"request_id", "requested_at"}),
                request_id=request_id, requested_at=requested_at), source="bench",
                key=env.key) for env in rescoring[start:start + CHUNK]]
            counts["rescores"] += await publisher.publish(settings.topics.scores,
                                                          score_batch(requests))
    finally:
        await publisher.stop()
    return counts


async def bench(traces: int, runs: int, replaying: bool = True, workers: int = 2,
                rescored: float = 0.0) -> None:
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack.enter_context(
            tansu_broker())
        dsn = os.environ.get("DATABASE_URL") or stack.enter_context(embedded_postgres(
            Path(stack.enter_context(tempfile.TemporaryDirectory())) / "pg"))
        tag = uuid.uuid4().hex[:8]
        settings = _settings(bootstrap, dsn, tag)
        await migrate_all(settings)
        await ensure_topics(settings)
        try:
            started = time.perf_counter()
            counts = await write_log(settings, traces, runs, rescored)
            total = sum(counts.values())
            print(f"log written: {counts} = {total:,} events in "
                  f"{time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            report = await replay(settings, ReplayFilter(), progress=False) if replaying else None
            seconds = time.perf_counter() - started
            if report is not None:
                    print(f"replay:  {report.log_records:,} traces read, {report.requested:,} "
                      f"rescorings requested in {seconds:.1f} s = "
                      f"{report.requested / seconds:,.0f} events/s (scan "
                      f"{report.log_records / report.scan_seconds:,.0f} traces/s, request "
                      f"{report.requested / report.request_seconds:,.0f} requests/s)")

            pg_before, cpu_before = _postgres_cpu(), _own_cpu()
            done = await rebuild(settings, progress=False, workers=workers)
            python_cpu, pg_cpu = _own_cpu() - cpu_before, _postgres_cpu() - pg_before
            print(f"rebuild: {done.events:,} events applied into {done.schema} in "
                  f"{done.seconds:.1f} s = {done.rate:,.0f} events/s (switched: "
                  f"{done.switched_at is not None}; {workers} worker(s)); CPU per event: this "
                  f"process and its workers "
                  f"{python_cpu / done.events * 1e6:.0f} µs, Postgres "
                  f"{pg_cpu / done.events * 1e6:.0f} µs")
        finally:
            conn = await asyncpg.connect(dsn)
            try:  # a given database keeps nothing of this run
                schemas = [r[0] for r in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"rr_%{tag}%")]
                for schema in schemas:
                    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
                await conn.execute("DELETE FROM evalstream.read_models WHERE name = $1",
                                   settings.read_model_schema)
            finally:
                await conn.close()


def _own_cpu() -> float:
    """CPU seconds of this process and of its children that have exited (rebuild workers)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _postgres_cpu() -> float:
    """CPU seconds so far of every process called postgres on the machine (the one measured and
    any idle other), with the backends that have exited (counted by the server that reaped
    them)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if proc.info["name"] == "postgres" and times:
            total += times.user + times.system + times.children_user + times.children_system
    return total


@app.command()
def main(traces: int = typer.Option(
             400_000, help="Finished traces in the log; each brings a CaseScored of 3 scores, "
                           "and with --rescored 0.5 the log holds 2.5 events per trace (1M by "
                           "default)."),
         rescored: float = typer.Option(
             0.5, min=0.0, max=1.0, help="Share of the traces whose later rescoring's scores "
                                         "are in the log too (make bench's replay rescores "
                                         "100,000 of ~219,000)."),
         runs: int = typer.Option(10, help="Runs they are spread over."),
         replaying: bool = typer.Option(True, "--replay/--no-replay",
                                        help="Also time the replay."),
         workers: int = typer.Option(2, help="Rebuild worker processes.")) -> None:
    tune_gc()  # as the commands do
    asyncio.run(bench(traces, runs, replaying, workers, rescored))


if __name__ == "__main__":
    app()
