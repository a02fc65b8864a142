"""What the benchmark sends and how it watches it arrive: a dataset with three evaluators, traces
whose outputs exercise every evaluator, posted through the ingest HTTP API, and the read model
polled in Postgres until the scores are visible."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import httpx

from schemas.common import EvaluatorSpec, run_item_key
from schemas.traces import ScoringCase
from services.evaluator.evaluators import REGISTRY

EVALUATORS = [
    {"type": "exact_match"},
    {"type": "contains", "keywords": ["paris", "berlin"]},
    {"type": "json_structure", "required_keys": ["answer", "confidence"]},
]
SCORES_PER_TRACE = len(EVALUATORS)

# The watched run items that have all their scores. One index probe per item, whatever plan
# Postgres caches for the prepared statement: the shape `run_item_id = ANY($1) GROUP BY` got a
# generic plan that scanned every score of the run, and cost Postgres half a core at 100,000
# traces, which the benchmark then charged to the system it measures.
SCORED_ITEMS = """
    SELECT w.run_item_id FROM unnest($1::text[]) AS w(run_item_id)
    WHERE (SELECT count(*) FROM scores s WHERE s.run_item_id = w.run_item_id) >= $2
"""
CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna", "Prague"]
MAX_ITEMS_PER_CALL = 1000


class BenchError(RuntimeError):
    """The system under test misbehaved (an HTTP error, a crashed service, a stall)."""


def item_id(tag: str, i: int) -> str:
    return f"{tag}-item-{i}"


def item(tag: str, i: int) -> dict:
    city = CITIES[i % len(CITIES)]
    return {"id": item_id(tag, i),
            "input": {"question": f"What is the capital of country #{i}?", "n": i},
            "expected_output": json.dumps({"answer": city, "confidence": 0.9})}


def output(i: int) -> str:
    """Four kinds of answer, so every evaluator sees matches and misses: exact, right keys with a
    different value, plain text, and a JSON object missing a key."""
    city = CITIES[i % len(CITIES)]
    match i % 4:
        case 0:
            return json.dumps({"answer": city, "confidence": 0.9})
        case 1:
            return json.dumps({"answer": city, "confidence": 0.5})
        case 2:
            return f"The capital is {city}."
        case _:
            return json.dumps({"answer": city})


def trace(tag: str, run_id: str, i: int) -> dict:
    return {"trace_id": f"{run_id}-{i}", "run_id": run_id, "dataset_item_id": item_id(tag, i),
            "output": output(i), "status": "succeeded", "latency_ms": float(100 + i % 900),
            "usage": {"input_tokens": 20, "output_tokens": 8}, "cost": 0.0001}


def scoring_case(tag: str, run_id: str, i: int) -> ScoringCase:
    """The case the evaluator service sees for trace `i`, for the baseline and the checks."""
    it = item(tag, i)
    return ScoringCase.model_construct(
        run_id=run_id, dataset_item_id=it["id"], trace_id=f"{run_id}-{i}", input=it["input"],
        output=output(i), expected_output=it["expected_output"], evaluators=SPECS)


SPECS = tuple(EvaluatorSpec.model_validate(s) for s in EVALUATORS)


def expected_averages(tag: str, indices: Sequence[int]) -> dict[str, float]:
    """What the read model must show per score name, computed with the same evaluator functions."""
    totals = {spec.score_name: 0.0 for spec in SPECS}
    for i in indices:
        case = scoring_case(tag, "r", i)
        for spec in SPECS:
            totals[spec.score_name] += REGISTRY[spec.type].fn(case, spec).value
    return {name: total / len(indices) for name, total in totals.items()}


def traces_body(traces: list[dict]) -> bytes:
    return json.dumps({"traces": traces}, separators=(",", ":")).encode()


@dataclass
class Target:
    """Clients for the system under test: ingest over HTTP, the read model in Postgres."""

    ingest: httpx.AsyncClient
    read_model: asyncpg.Pool
    exited: Callable[[], list[str]]
    log_tail: Callable[[str], str]

    def check_alive(self) -> None:
        if dead := self.exited():
            raise BenchError(f"service(s) exited: {dead}\n" + "\n".join(
                f"--- {k} ---\n{self.log_tail(k)}" for k in dead))

    async def post(self, path: str, body: bytes | dict, status: int) -> dict:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        r = await self.ingest.post(path, content=body,
                                   headers={"content-type": "application/json"})
        if r.status_code != status:
            raise BenchError(f"POST {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    async def load_dataset(self, tag: str, n: int, concurrency: int = 4) -> str:
        dataset = await self.post("/v1/datasets", {"name": f"bench {tag}",
                                                   "evaluators": EVALUATORS}, 201)
        chunks = iter(range(0, n, MAX_ITEMS_PER_CALL))

        async def worker() -> None:
            for start in chunks:
                items = [item(tag, i) for i in range(start, min(start + MAX_ITEMS_PER_CALL, n))]
                await self.post(f"/v1/datasets/{dataset['id']}/items", {"items": items}, 201)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        # The read model must have caught up before the clock starts, or the projection of the
        # items would be timed as part of the traces.
        await self.wait_for(
            lambda: self.read_model.fetchval(
                "SELECT count(*) FROM dataset_items WHERE dataset_id = $1", dataset["id"]),
            n, "dataset items projected", within=max(60.0, n / 500))
        return dataset["id"]

    async def start_run(self, dataset_id: str, name: str) -> str:
        return (await self.post("/v1/runs", {"dataset_id": dataset_id, "name": name}, 201))["id"]

    async def wait_for(self, count: Callable, target: int, what: str, within: float) -> None:
        deadline = time.monotonic() + within
        while (seen := await count()) < target:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: {seen}/{target} after {within:.0f}s")
            await asyncio.sleep(0.1)

    async def postgres_counters(self) -> dict[str, int]:
        """Cluster-wide checkpoints and this database's autovacuum/autoanalyze runs so far:
        background work that competes with the pipeline for the same 2 cores and disk."""
        out: dict[str, int] = {}
        with contextlib.suppress(asyncpg.PostgresError):  # pg_stat_checkpointer is PG 17+
            out["checkpoints"] = await self.read_model.fetchval(
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer")
        row = await self.read_model.fetchrow(
            "SELECT coalesce(sum(autovacuum_count), 0)::int AS autovacuum,"
            " coalesce(sum(autoanalyze_count), 0)::int AS autoanalyze FROM pg_stat_all_tables")
        return out | dict(row)

    async def scores_of(self, run_ids: list[str]) -> int:
        return await self.read_model.fetchval(
            "SELECT count(*) FROM scores WHERE run_id = ANY($1::text[])", run_ids)


@dataclass
class Throughput:
    traces: int
    runs: int
    seconds: float  # first POST -> last score visible
    post_seconds: float  # first POST -> last 202
    run_ids: list[str] = field(default_factory=list)
    acks: list[tuple[float, int]] = field(default_factory=list)  # (t, traces acknowledged)
    visible: list[tuple[float, int]] = field(default_factory=list)  # (t, scores visible)
    start: float = 0.0  # monotonic time of the first POST
    end: float = 0.0
    wal_bytes: int | None = None  # Postgres WAL written meanwhile (whole cluster)

    @property
    def traces_per_s(self) -> float:
        return self.traces / self.seconds

    @property
    def scores_per_s(self) -> float:
        return self.traces * SCORES_PER_TRACE / self.seconds

    def as_dict(self) -> dict:
        return {"traces": self.traces, "runs": self.runs, "seconds": round(self.seconds, 3),
                "post_seconds": round(self.post_seconds, 3),
                "traces_per_s": round(self.traces_per_s, 1),
                "scores_per_s": round(self.scores_per_s, 1),
                "ingest_accept_traces_per_s": round(self.traces / self.post_seconds, 1),
                "wal_bytes_per_trace": round(self.wal_bytes / self.traces)
                if self.wal_bytes is not None else None}


async def measure_throughput(target: Target, tag: str, dataset_id: str, n: int, *, runs: int = 1,
                             batch: int = 1000, concurrency: int = 4, stall_seconds: float = 60.0,
                             label: str = "throughput") -> Throughput:
    """Post `n` traces (split over `runs` runs) with `concurrency` requests in flight, and watch
    the read model until all their scores are visible.

    Counting a run's scores costs Postgres a scan of all of them, which at 300,000 rows would
    take a real share of these 2 cores; so progress is watched by index lookups: on the last
    trace of every POST, and once that one is scored, on each trace of that POST until it is
    (traces are keyed by run item, so a POST's traces reach several partitions and need not be
    scored in order). One exact count confirms the end; should it disagree, counting continues."""
    run_ids = [await target.start_run(dataset_id, f"{label} {k}") for k in range(runs)]
    per_run = -(-n // runs)
    per_run_posts: list[list[tuple[bytes, int, list[str]]]] = []
    for k, run_id in enumerate(run_ids):
        indices = range(k * per_run, min((k + 1) * per_run, n))
        posts = []
        for start in range(indices.start, indices.stop, batch):
            chunk = [trace(tag, run_id, i) for i in range(start, min(start + batch, indices.stop))]
            posts.append((traces_body(chunk), len(chunk),
                          [run_item_key(run_id, t["dataset_item_id"], t["trace_id"])
                           for t in chunk]))
        per_run_posts.append(posts)
    # The runs' batches interleaved, as independent clients would send them.
    posts = [p for group in itertools.zip_longest(*per_run_posts) for p in group if p]
    expected = n * SCORES_PER_TRACE
    loop = asyncio.get_running_loop()
    result = Throughput(traces=n, runs=runs, seconds=0.0, post_seconds=0.0, run_ids=run_ids)
    pending = iter(posts)
    acked = 0

    async def poster() -> None:
        nonlocal acked
        for body, count, _ in pending:
            await target.post("/v1/traces", body, 202)
            acked += count
            result.acks.append((loop.time() - result.start, acked))

    async def watcher() -> None:
        waiting = {items[-1]: items for _, _, items in posts}  # by each POST's last trace
        checking: set[str] = set()
        visible, last_progress, confirming = 0, loop.time(), False
        while True:
            t = loop.time()
            if waiting or checking:
                if waiting:
                    for (sentinel,) in await target.read_model.fetch(
                            SCORED_ITEMS, list(waiting), SCORES_PER_TRACE):
                        checking.update(waiting.pop(sentinel))
                probe = list(itertools.islice(checking, 5000))
                scored = await target.read_model.fetch(SCORED_ITEMS, probe, SCORES_PER_TRACE)
                checking.difference_update(r[0] for r in scored)
                now_visible = visible + len(scored) * SCORES_PER_TRACE
            else:  # every trace seen scored: confirm with one exact count (until it agrees)
                confirming = True
                now_visible = await target.scores_of(run_ids)
                if now_visible >= expected:
                    result.visible.append((t - result.start, now_visible))
                    result.end = t
                    return
            if now_visible != visible:
                visible, last_progress = now_visible, t
                result.visible.append((t - result.start, visible))
            elif t - last_progress > stall_seconds:
                raise BenchError(f"{label}: no new score for {stall_seconds:.0f}s "
                                 f"({visible}/{expected} visible)")
            target.check_alive()
            await asyncio.sleep(0.25 if confirming else 0.1)

    wal_before = await target.read_model.fetchval("SELECT pg_current_wal_lsn()::text")
    result.start = loop.time()
    posters = [asyncio.create_task(poster()) for _ in range(concurrency)]
    watch = asyncio.create_task(watcher())
    try:
        await asyncio.gather(*posters)
        result.post_seconds = loop.time() - result.start
        await watch
    finally:
        for task in (*posters, watch):
            task.cancel()
    result.seconds = result.end - result.start
    with contextlib.suppress(asyncpg.PostgresError):
        result.wal_bytes = int(await target.read_model.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", wal_before))
    return result


@dataclass
class Latency:
    offered_traces_per_s: float
    achieved_traces_per_s: float
    traces: int
    latencies_ms: list[float]  # per trace: POST sent -> all its scores visible
    points: list[tuple[float, float]]  # (s since start the POST was sent, latency ms)
    post_ms: list[float]  # per batch: POST sent -> 202
    poll_interval_ms: float
    start: float = 0.0
    run_id: str = ""

    def as_dict(self) -> dict:
        return {"offered_traces_per_s": round(self.offered_traces_per_s, 1),
                "achieved_traces_per_s": round(self.achieved_traces_per_s, 1),
                "traces": self.traces, "poll_interval_ms": self.poll_interval_ms,
                **{f"{k}_ms": v for k, v in percentiles(self.latencies_ms).items()},
                **{f"post_{k}_ms": v for k, v in percentiles(self.post_ms).items()}}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1)}


async def measure_latency(target: Target, tag: str, dataset_id: str, *, rate: float,
                          seconds: float, n_max: int, batch: int = 50,
                          poll_ms: float = 15.0, settle_seconds: float = 30.0) -> Latency:
    """Offer `rate` traces/s as batches of `batch` on a fixed schedule (open loop: a slow answer
    does not delay the next batch) and record when each trace's scores become visible."""
    run_id = await target.start_run(dataset_id, "latency")
    # Fresh statistics, or the watcher's lookup by run item plans a full scan of `scores` (no
    # autoanalyze has run yet) and the benchmark ends up measuring its own polling.
    await target.read_model.execute("ANALYZE scores")
    total = max(batch, min(n_max, int(rate * seconds) // batch * batch))
    batches = [[trace(tag, run_id, i) for i in range(s, min(s + batch, total))]
               for s in range(0, total, batch)]
    bodies = [traces_body(b) for b in batches]
    item_ids = [[run_item_key(run_id, t["dataset_item_id"], t["trace_id"]) for t in b]
                for b in batches]
    interval = batch / rate
    loop = asyncio.get_running_loop()
    sent_at: dict[int, float] = {}
    post_ms: list[float] = []
    outstanding: dict[str, int] = {}  # run item id -> batch number
    latencies: list[float] = []
    points: list[tuple[float, float]] = []

    async def send(k: int) -> None:
        sent_at[k] = t = loop.time()
        for rid in item_ids[k]:
            outstanding[rid] = k
        await target.post("/v1/traces", bodies[k], 202)
        post_ms.append((loop.time() - t) * 1000)

    async def schedule() -> None:
        tasks = []
        for k in range(len(bodies)):
            delay = start + k * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(k)))
        await asyncio.gather(*tasks)

    async def watch() -> None:
        deadline = None
        while len(latencies) < total:
            if outstanding:
                t = loop.time()
                # The oldest outstanding items first; they are the ones due.
                ids = list(itertools.islice(outstanding, 1000))
                rows = await target.read_model.fetch(SCORED_ITEMS, ids, SCORES_PER_TRACE)
                for row in rows:
                    k = outstanding.pop(row[0])
                    latencies.append((t - sent_at[k]) * 1000)
                    points.append((round(sent_at[k] - start, 3), round(latencies[-1], 1)))
            if len(sent_at) == len(bodies):
                deadline = deadline or loop.time() + settle_seconds
                if loop.time() > deadline:
                    raise BenchError(f"latency: {len(outstanding)} traces never scored")
            target.check_alive()
            await asyncio.sleep(poll_ms / 1000)

    start = loop.time()
    sched = asyncio.create_task(schedule())
    watcher = asyncio.create_task(watch())
    try:
        await sched
        sent_seconds = max(sent_at.values()) - start + interval
        await watcher
    finally:
        sched.cancel()
        watcher.cancel()
    return Latency(offered_traces_per_s=rate, achieved_traces_per_s=total / sent_seconds,
                   traces=total, latencies_ms=latencies, points=points, post_ms=post_ms,
                   poll_interval_ms=poll_ms, start=start, run_id=run_id)


async def score_averages(pool: asyncpg.Pool, run_ids: list[str]) -> dict[str, dict]:
    rows = await pool.fetch(
        "SELECT name, count(*) AS n, avg(value) AS average FROM scores"
        " WHERE run_id = ANY($1::text[]) GROUP BY name", run_ids)
    return {r["name"]: {"count": r["n"], "average": r["average"]} for r in rows}
