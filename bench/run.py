"""`make bench`: measure evalstream end to end on one machine and print one table.

Starts a broker and Postgres (unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are given) and the
three services as processes, then: loads a dataset through the ingest API; posts N traces as fast
as they are taken and times them until every score is visible in the read model; measures
POST → score latency at half that load; optionally scale-out with 2 evaluator / projection
processes; replay and rebuild where those commands exist; then, with the services stopped, the
seed-style baseline, COPY, and each stage alone. Writes bench/results/bench-<time>.json,
latest.json and a PNG. See docs/benchmark.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import psutil
import typer
from rich.console import Console

from bench import baseline, ceilings, replay_timing
from bench.pg_activity import ActivitySampler
from bench.profiling import Profiles
from bench.report import draw_png, print_table, write_json
from bench.sampling import MACHINE, ResourceSampler
from bench.stack import API_KEY, Stack
from bench.workload import (
    SCORES_PER_TRACE,
    BenchError,
    Target,
    expected_averages,
    measure_latency,
    measure_throughput,
    score_averages,
)
from services.cli import tune_gc
from services.database import create_pool
from services.settings import Settings

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

PHASES = ("latency", "baseline", "ceilings", "replay")
SCALE_CONFIGS = ((1, 1), (2, 1), (2, 2), (1, 2))  # (evaluators, projections), one change a step
SYSTEM = "system (all but the bench client)"
OTHERS = "other processes on the machine"


def say(message: str) -> None:
    console.log(message)


async def check_scores(target: Target, tag: str, run_ids: list[str], n: int) -> dict:
    """The read model holds n scores per name with the averages the evaluator functions give."""
    seen = await score_averages(target.read_model, run_ids)
    expected = expected_averages(tag, range(n))
    problems = []
    for name, average in expected.items():
        got = seen.get(name)
        if got is None or got["count"] != n or abs(got["average"] - average) > 1e-9:
            problems.append(f"{name}: expected {n} × avg {average:.4f}, got {got}")
    return {"ok": not problems, "detail": "; ".join(problems), "scores": seen}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def per_trace(resources: dict, n: int) -> dict:
    """CPU per trace of each process: the figure that says what 2 cores can carry."""
    for r in resources.values():
        r["cpu_us_per_trace"] = round(r["cpu_seconds"] / n * 1e6, 1)
    system = [r for label, r in resources.items()
              if label not in ("bench client", MACHINE)]
    total = resources[SYSTEM] = {
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in system), 2),
        "cpu_cores": round(sum(r["cpu_cores"] for r in system), 2),
        "cpu_us_per_trace": round(sum(r["cpu_us_per_trace"] for r in system), 1),
        "peak_mb": round(sum(r["peak_mb"] for r in system), 1)}
    if MACHINE in resources and "bench client" in resources:
        # Others share these 2 cores (tests, editors); what they took is not ours to count.
        machine, client = resources[MACHINE], resources["bench client"]
        resources[OTHERS] = {
            "cpu_seconds": round(machine["cpu_seconds"] - total["cpu_seconds"]
                                 - client["cpu_seconds"], 2),
            "cpu_cores": round(machine["cpu_cores"] - total["cpu_cores"]
                               - client["cpu_cores"], 2),
            "cpu_us_per_trace": 0.0, "peak_mb": 0.0}
    return resources


def code_version() -> dict:
    """The commit measured, and whether the working tree differed from it."""
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip()
        return ""

    changed = [line for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith("bench/")]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_files": len(changed)}


async def scale_out(stack: Stack, target: Target, sampler: ResourceSampler, tag: str,
                    dataset_id: str, *, items: int, runs: int, concurrency: int) -> list[dict]:
    out = []
    groups = {"evaluator": stack.settings.evaluator_group,
              "projections": stack.settings.projections_group}

    async def settle(wanted: dict[str, int]) -> None:
        # The clock starts once both consumer groups have finished rebalancing.
        for name, count in wanted.items():
            await stack.wait_group_stable(groups[name], count)

    try:
        for evaluators, projections in SCALE_CONFIGS:
            wanted = {"evaluator": evaluators, "projections": projections}
            for name, count in wanted.items():
                instance = f"{name}-2"
                if count == 2 and instance not in stack.groups:
                    stack.add_instance(name, instance)
                elif count == 1 and instance in stack.groups:
                    stack.stop_instance(instance)
            await settle(wanted)
            say(f"scale-out: {evaluators} evaluator(s), {projections} projection process(es)")
            tp = await measure_throughput(target, tag, dataset_id, items, runs=runs,
                                          concurrency=concurrency, label="scale")
            used = per_trace(sampler.summary(tp.start, tp.end), items)
            out.append({"evaluators": evaluators, "projections": projections,
                        "partitions": stack.settings.topic_partitions, **tp.as_dict(),
                        "system_cores": used[SYSTEM]["cpu_cores"],
                        "system_cpu_us_per_trace": used[SYSTEM]["cpu_us_per_trace"],
                        "other_cores": used.get(OTHERS, {}).get("cpu_cores")})
            say(f"  {tp.traces_per_s:,.0f} traces/s")
    finally:
        for instance in ("evaluator-2", "projections-2"):
            if instance in stack.groups:
                stack.stop_instance(instance)
        await settle({"evaluator": 1, "projections": 1})
    return out


def log_commands() -> set[str]:
    """The `evalstream` commands that exist in this tree (replay and rebuild are others' work)."""
    from services.cli import app as cli

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in
             cli.registered_commands}
    for group in cli.registered_groups:
        names |= {f"{group.name} {c.name or c.callback.__name__}"
                  for c in group.typer_instance.registered_commands}
    return names


async def replay_and_rebuild(stack: Stack, run_id: str) -> tuple[dict, dict]:
    """Time `evalstream replay` (rescoring the throughput run) and then `evalstream projections
    rebuild` (the whole log so far), where those commands exist."""
    commands = log_commands()
    query = httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.settings.query_port}",
                              headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    replay: dict = {"note": "not available (no `evalstream replay`)"}
    rebuilt: dict = {"note": "not available (no `evalstream projections rebuild`)"}
    try:
        if "replay" in commands:
            say("replay: `evalstream replay --run <throughput run>` until every case is rescored…")
            try:
                replay = await replay_timing.replay_rescore(stack.env, query, run_id)
                say(f"  {replay['events_per_s']:,.0f} cases/s ({replay['events']:,} in "
                    f"{replay['seconds']:.1f} s)")
            except RuntimeError as e:
                replay = {"note": f"failed: {e}"}
        if "projections rebuild" in commands:
            say("rebuild: `evalstream projections rebuild` over the whole log…")
            try:
                rebuilt = await replay_timing.rebuild(stack.env)
                say(f"  {rebuilt['events_per_s']:,.0f} events/s ({rebuilt['events']:,} in "
                    f"{rebuilt['seconds']:.1f} s)")
            except RuntimeError as e:
                rebuilt = {"note": f"failed: {e}"}
    finally:
        await query.aclose()
    return replay, rebuilt


async def yardsticks(settings: Settings, tag: str, opts: dict, postgres_pid: int | None) -> dict:
    """With the services stopped: the seed-style loop, COPY, and each stage alone."""
    n, base = opts["items"], {}
    if "baseline" not in opts["skip"]:
        schema = f"bench_baseline_{tag}"
        conn = await asyncpg.connect(settings.dsn)
        try:
            m = min(n, opts["baseline_items"])
            say(f"seed design: {m:,} items × {SCORES_PER_TRACE} evaluators, one statement at "
                f"a time…")
            await baseline.prepare(conn, schema, tag, "baseline", m)
            base["seed_loop"] = (await baseline.seed_loop(conn, schema)).as_dict()
            say(f"  {base['seed_loop']['rows_per_s']:,.0f} scores/s")
            say(f"COPY: {n * SCORES_PER_TRACE:,} score rows…")
            base["copy"] = (await baseline.copy_limit(
                conn, schema, f"{settings.read_model_schema}.scores", tag, "baseline",
                n)).as_dict()
            say(f"  {base['copy']['rows_per_s']:,.0f} rows/s")
        finally:
            await conn.close()
    if "ceilings" not in opts["skip"]:
        m = min(n, opts["ceiling_items"])
        say(f"stages alone: {m:,} traces through the evaluator's and the projections' code…")
        base["score_batch"] = ceilings.evaluator_stage(tag, "ceiling", m)
        base["apply_batch"] = await ceilings.projection_stage(
            settings.dsn, f"bench_apply_{tag}", tag, "ceiling", m,
            settings.batch_max_records, postgres_pid)
        say(f"  evaluator {base['score_batch']['rows_per_s']:,.0f} traces/s, "
            f"projections {base['apply_batch']['rows_per_s']:,.0f} traces/s")
    return base


async def throughput_phase(stack: Stack, target: Target, sampler: ResourceSampler,
                           dataset_id: str, opts: dict, stamp: str, results: dict,
                           series: dict) -> list[str]:
    """End to end: N traces as fast as they are taken; returns the run ids."""
    n = opts["items"]
    profiles = Profiles(opts["results_dir"])
    for label in opts["profile"]:
        profiles.start(label, stack.service_pids()[label], stamp)
    say(f"throughput: {n:,} traces, {opts['concurrency']} POSTs of {opts['batch']} in flight…")
    before = await target.postgres_counters()
    async with contextlib.AsyncExitStack() as diagnostics:
        activity = None
        if opts["profile"]:
            activity = await diagnostics.enter_async_context(
                ActivitySampler(stack.settings.dsn))
        tp = await measure_throughput(target, stack.tag, dataset_id, n, runs=opts["runs"],
                                      batch=opts["batch"], concurrency=opts["concurrency"])
    results["profiles"] = profiles.stop()
    if activity is not None:
        results["pg_activity"] = activity.summary()
    results["throughput"] = tp.as_dict() | {"postgres_background": counter_delta(
        before, await target.postgres_counters())}
    results["resources"] = per_trace(sampler.summary(tp.start, tp.end), n)
    series |= {"acks": tp.acks, "visible": tp.visible, "cpu": sampler.series(tp.start, tp.end)}
    say(f"  {tp.traces_per_s:,.0f} traces/s, {tp.scores_per_s:,.0f} scores/s end to end "
        f"({tp.seconds:.1f} s; ingest took them in {tp.post_seconds:.1f} s)")
    results["correctness"] = await check_scores(target, stack.tag, tp.run_ids, n)
    return tp.run_ids


async def latency_phase(stack: Stack, target: Target, sampler: ResourceSampler,
                        dataset_id: str, n_max: int, opts: dict, results: dict,
                        series: dict) -> None:
    """Half the measured throughput, offered on a fixed schedule; POST → scores visible."""
    rate = opts["latency_rate"] or results["throughput"]["traces_per_s"] / 2
    say(f"latency: {rate:,.0f} traces/s in batches of {opts['latency_batch']} for "
        f"{opts['latency_seconds']:.0f} s…")
    before = await target.postgres_counters()
    lat = await measure_latency(target, stack.tag, dataset_id, rate=rate,
                                seconds=opts["latency_seconds"], n_max=n_max,
                                batch=opts["latency_batch"])
    results["latency"] = lat.as_dict() | {"postgres_background": counter_delta(
        before, await target.postgres_counters())}
    results["latency_resources"] = sampler.summary(lat.start, time.monotonic())
    series["latencies_ms"] = lat.latencies_ms
    series["latency_points"] = lat.points
    say(f"  p50 {results['latency']['p50_ms']:.0f} ms, p99 {results['latency']['p99_ms']:.0f} ms")


async def bench(stack: Stack, opts: dict, stamp: str) -> tuple[dict, dict]:
    """Every phase on one stack; returns the figures and the series for the chart."""
    settings = stack.start_infrastructure()
    say(f"broker {settings.bootstrap}, database {settings.dsn.split('@')[-1]}, "
        f"topics bench{stack.tag}.*, {settings.topic_partitions} partitions")
    await stack.migrate()
    stack.start_services()
    say(f"services up: {', '.join(stack.service_pids())} (logs in {stack.log_dir})")
    pool = await create_pool(settings.dsn, settings.read_model_schema, max_size=4)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.ingest_port}",
                             headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120,
                             limits=httpx.Limits(max_connections=64))
    target = Target(http, pool, stack.exited, stack.log_tail)
    broker_pid, postgres_pid = stack.broker_pid(), await stack.postgres_pid()
    own = {"bench client": os.getpid()} | ({"broker": broker_pid} if broker_pid else {})
    sampler = ResourceSampler(lambda: {**stack.service_pids(), **own}, postgres_pid)
    sampler.start()
    say(f"sampling {', '.join(f'{k} {v}' for k, v in {**stack.service_pids(), **own}.items())}"
        f", postgres {postgres_pid or 'not local'}")
    results: dict = {
        "started_at": stamp,
        "code": code_version(),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(
            psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "platform": platform.platform()},
        "config": dict(opts) | {
            "batch_max_records": settings.batch_max_records,
            "batch_timeout_ms": settings.batch_timeout_ms,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "topic_partitions": settings.topic_partitions,
            "broker": "Tansu (started here)" if stack.started_broker else "given by URL",
            "postgres": "embedded (started here)" if stack.started_postgres
            else "given by URL"},
    }
    series: dict = {}
    try:
        dataset_items = max(opts["items"], opts["scale_items"] if opts["scale"] else 0)
        say(f"loading {dataset_items:,} dataset items through the ingest API…")
        t = time.monotonic()
        dataset_id = await target.load_dataset(stack.tag, dataset_items)
        results["load"] = {"items": dataset_items, "seconds": round(time.monotonic() - t, 2)}
        say(f"  loaded and projected in {results['load']['seconds']:.1f} s")
        run_ids = await throughput_phase(stack, target, sampler, dataset_id, opts, stamp,
                                         results, series)
        if "latency" not in opts["skip"]:
            await latency_phase(stack, target, sampler, dataset_id, dataset_items, opts,
                                results, series)
        if opts["scale"]:
            results["scale"] = await scale_out(
                stack, target, sampler, stack.tag, dataset_id, items=opts["scale_items"],
                runs=opts["scale_runs"], concurrency=opts["concurrency"])
        if "replay" not in opts["skip"]:
            # Last of the live phases: a rebuild moves the live read model to a new schema.
            results["replay"], results["rebuild"] = await replay_and_rebuild(stack, run_ids[0])
    finally:
        await http.aclose()
        await pool.close()
        stack.stop_services()
        sampler.stop()
    if base := await yardsticks(settings, stack.tag, opts, postgres_pid):
        results["baseline"] = base
    return results, series


def _phases(value: str) -> list[str]:
    names = [p.strip() for p in value.split(",") if p.strip()]
    for name in names:
        if name not in PHASES:
            raise typer.BadParameter(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
    return names


@app.command()
def main(
    items: int = typer.Option(100_000, "--items", min=1, help="Dataset items = traces posted."),
    concurrency: int = typer.Option(4, min=1, help="POST /v1/traces requests in flight."),
    batch: int = typer.Option(1000, min=1, max=1000, help="Traces per POST."),
    runs: int = typer.Option(1, min=1, help="Runs the traces are spread over (one run's "
                                            "traces already reach every partition: they are "
                                            "keyed by run item)."),
    latency_seconds: float = typer.Option(15.0, help="Duration of the paced latency phase."),
    latency_batch: int = typer.Option(50, min=1, max=1000, help="Traces per paced POST."),
    latency_rate: float = typer.Option(0.0, help="Offered traces/s; 0 = half the throughput."),
    baseline_items: int = typer.Option(
        10_000, help="Items scored by the seed-style loop (capped at --items; its rate is "
                     "per row, so a part of the dataset gives the same figure)."),
    ceiling_items: int = typer.Option(20_000, help="Traces through each stage alone."),
    scale: bool = typer.Option(False, "--scale", help="Also measure 1/2 evaluator and "
                                                      "1/2 projection processes."),
    scale_items: int = typer.Option(20_000, help="Traces per scale-out measurement."),
    scale_runs: int = typer.Option(1, help="Runs the scale-out traces are spread over (one "
                                           "run's traces already reach every partition: they "
                                           "are keyed by run item)."),
    profile: str = typer.Option("", help="Comma-separated services to sample with py-spy "
                                         "during the throughput run (ingest,evaluator,…)."),
    skip: str = typer.Option("", help=f"Comma-separated phases to skip: {', '.join(PHASES)}."),
    keep: bool = typer.Option(False, help="Keep topics, schemas and the work directory."),
    results_dir: Path = typer.Option(RESULTS, help="Where JSON and PNG go."),
) -> None:
    """Measure evalstream end to end and print one table (see docs/benchmark.md)."""
    profiled = [p.strip() for p in profile.split(",") if p.strip()]
    if unknown := set(profiled) - {"ingest", "evaluator", "projections"}:
        raise typer.BadParameter(f"--profile: no service {', '.join(sorted(unknown))}")
    opts = dict(items=items, concurrency=concurrency, batch=batch, runs=runs,
                latency_seconds=latency_seconds, latency_batch=latency_batch,
                latency_rate=latency_rate, baseline_items=baseline_items,
                ceiling_items=ceiling_items, scale=scale, scale_items=scale_items,
                scale_runs=scale_runs,
                profile=profiled,
                skip=_phases(skip), results_dir=results_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(keep=keep)
    failed = True
    tune_gc()  # as the services do, so the stages measured alone run as they do there
    try:
        results, series = asyncio.run(bench(stack, opts, stamp))
        failed = False
    except BenchError as e:
        console.print(f"[red]benchmark failed:[/] {e}")
        raise typer.Exit(1) from None
    finally:
        with contextlib.suppress(Exception):
            stack.close(keep_logs=failed)
        if failed:
            console.print(f"service logs kept in {stack.log_dir}")
    results["config"]["results_dir"] = str(results_dir)
    print_table(results, Console())
    json_path = write_json(results, results_dir, stamp)
    png_path = draw_png(results, series, results_dir, stamp)
    console.print(f"\nwrote {json_path}, {results_dir / 'latest.json'} and {png_path}")


if __name__ == "__main__":
    sys.exit(app())
