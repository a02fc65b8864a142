"""Run comparison: runs of one dataset side by side against a baseline run, per run, per score
name (average, pass rate, delta, improvements and regressions) and per dataset item.

An item's value of a score name is the mean of that name's scores on the item (normally one; a
manual verdict can sit beside a programmatic score of the same name). A regression is a value
lower than the baseline's for the same item and name, an improvement a higher one; items a run
has no trace for are `missing`, never `failed`. Every statement is set-based over the runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

import asyncpg

from services.projections import views
from services.projections.views import InvalidQuery

ItemFilter = Literal["regressions", "improvements", "status_changed"]
SECTIONS = ("runs", "scores", "items")
MAX_RUNS = 10
MISSING = "missing"


def parse_runs(runs: str, baseline: str | None) -> tuple[list[str], str | None]:
    """`A,B,C` → the run ids in order, and the baseline if given (see `resolve`)."""
    run_ids = [r.strip() for r in runs.split(",") if r.strip()]
    if not run_ids:
        raise InvalidQuery("runs", "give run ids, comma-separated")
    if len(run_ids) > MAX_RUNS:
        raise InvalidQuery("runs", f"at most {MAX_RUNS} runs can be compared at once")
    dupes = sorted({r for r in run_ids if run_ids.count(r) > 1})
    if dupes:
        raise InvalidQuery("runs", f"run(s) listed twice: {', '.join(dupes)}")
    if baseline is not None and baseline not in run_ids:
        raise InvalidQuery("baseline", f"baseline {baseline!r} is not one of the compared runs")
    return run_ids, baseline


async def resolve(conn: asyncpg.Connection, run_ids: Sequence[str],
                  baseline: str | None) -> tuple[str, list[str], str]:
    """The runs' dataset, the runs to compare and their baseline. With no baseline given, it is
    the dataset's baseline run (PUT /v1/datasets/{id}/baseline) when that is among the runs,
    else the first run; one run alone is compared with the dataset's baseline run."""
    dataset_id = await dataset_of(conn, run_ids)
    run_ids = list(run_ids)
    if baseline is None:
        pinned = await conn.fetchval(
            "SELECT d.baseline_run_id FROM datasets d JOIN runs r ON r.id = d.baseline_run_id"
            " WHERE d.id = $1", dataset_id)
        if pinned is not None and len(run_ids) == 1 and pinned not in run_ids:
            run_ids.insert(0, pinned)
        baseline = pinned if pinned in run_ids else run_ids[0]
    if len(run_ids) < 2:
        raise InvalidQuery("runs", "give at least two run ids, comma-separated, or one run of a "
                                   "dataset with another run as its baseline "
                                   "(PUT /v1/datasets/{id}/baseline)")
    return dataset_id, run_ids, baseline


def parse_sections(include: str) -> tuple[str, ...]:
    sections = tuple(s.strip() for s in include.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InvalidQuery("include", f"unknown section(s) {unknown}; choose from "
                                      f"{', '.join(SECTIONS)}")
    return sections


async def dataset_of(conn: asyncpg.Connection, run_ids: Sequence[str]) -> str:
    """The one dataset the runs share; InvalidQuery naming `runs` when a run is unknown or the
    runs belong to different datasets."""
    found = {r["id"]: r["dataset_id"] for r in await conn.fetch(
        "SELECT id, dataset_id FROM runs WHERE id = ANY($1::text[])", list(run_ids))}
    unknown = [r for r in run_ids if r not in found]
    if unknown:
        raise InvalidQuery("runs", f"unknown run(s): {', '.join(unknown)}", 404)
    datasets = {found[r] for r in run_ids}
    if len(datasets) > 1:
        raise InvalidQuery("runs", "runs of different datasets cannot be compared: " + ", ".join(
            f"{r} ({found[r]})" for r in run_ids))
    return datasets.pop()


# Per compared run: its per-item values joined to the baseline's and counted per name, with the
# mean and spread of the paired differences of values and of passing (an item's share of its
# scores of that name that pass). Each side is one run's slice of scores_run_item_name,
# aggregated and joined in index order. $3: the pass threshold of a score without its own.
_SCORE_CHANGES_SQL = """
SELECT o.run_id, c.*
FROM unnest($1::text[]) AS o(run_id)
CROSS JOIN LATERAL (
    SELECT s.name,
           count(*) FILTER (WHERE s.value > b.value) AS improvements,
           count(*) FILTER (WHERE s.value < b.value) AS regressions,
           count(*) FILTER (WHERE s.value = b.value) AS unchanged,
           count(*) AS paired,
           avg(s.value - b.value) AS value_delta, stddev_samp(s.value - b.value) AS value_sd,
           avg(s.passed - b.passed) AS pass_delta, stddev_samp(s.passed - b.passed) AS pass_sd
    FROM (SELECT dataset_item_id, name, avg(value) AS value,
                 avg((value >= coalesce(pass_threshold, $3))::int)::float8 AS passed FROM scores
          WHERE run_id = o.run_id AND dataset_item_id IS NOT NULL
            AND data_type <> 'categorical'
          GROUP BY dataset_item_id, name) s
    JOIN (SELECT dataset_item_id, name, avg(value) AS value,
                 avg((value >= coalesce(pass_threshold, $3))::int)::float8 AS passed FROM scores
          WHERE run_id = $2 AND dataset_item_id IS NOT NULL AND data_type <> 'categorical'
          GROUP BY dataset_item_id, name) b
      ON b.dataset_item_id = s.dataset_item_id AND b.name = s.name
    GROUP BY s.name
) c
WHERE o.run_id <> $2
"""

# Two-sided 95% quantiles of Student's t by degrees of freedom (1–30); past 30, the normal's.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval95(mean: float | None, sd: float | None, n: int) -> list[float] | None:
    """The 95% confidence interval of a mean of `n` paired differences (Student's t): where the
    mean difference between the two runs lies, given how much the items disagree. None below
    two pairs."""
    if mean is None or sd is None or n < 2:
        return None
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.960) * sd / n ** 0.5
    return [float(mean) - half, float(mean) + half]


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def p_fell(mean: float | None, sd: float | None, n: int) -> float | None:
    """One-sided p-value of a fall (Student's t over `n` paired differences): how likely a mean
    change this low or lower would be were there no change at all. None below two pairs."""
    if mean is None or sd is None or n < 2:
        return None
    if sd == 0:
        return 0.0 if mean < 0 else 1.0
    return t_cdf(float(mean) / (float(sd) / n ** 0.5), n - 1)


def paired(counted: asyncpg.Record | None) -> dict:
    """The paired comparison of one run with the baseline on one score name: over the items both
    scored, the mean change of the value and of passing, each with its 95% confidence interval,
    and whether the change of passing is significant (its interval excludes 0) — a drop of a few
    points on a small dataset often is not."""
    if counted is None:
        return {"items": 0, "delta_average": None, "delta_average_ci95": None,
                "delta_pass_rate": None, "delta_pass_rate_ci95": None, "significant": None,
                "p_pass_rate_fell": None}
    n = counted["paired"]
    pass_ci = interval95(counted["pass_delta"], counted["pass_sd"], n)
    if pass_ci is not None:  # a change of pass rate lies within ±1 whatever the spread says
        pass_ci = [max(pass_ci[0], -1.0), min(pass_ci[1], 1.0)]
    return {"items": n, "delta_average": counted["value_delta"],
            "delta_average_ci95": interval95(counted["value_delta"], counted["value_sd"], n),
            "delta_pass_rate": counted["pass_delta"], "delta_pass_rate_ci95": pass_ci,
            "significant": None if pass_ci is None else (pass_ci[0] > 0 or pass_ci[1] < 0),
            "p_pass_rate_fell": p_fell(counted["pass_delta"], counted["pass_sd"], n)}

_SCORE_SUMMARIES_SQL = (f"SELECT * FROM ({views.sql_template(views.SCORE_SUMMARY_TEMPLATE)}) s"
                        " WHERE run_id = ANY($1::text[])")


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


async def score_changes(conn: asyncpg.Connection, run_ids: Sequence[str],
                        baseline: str) -> dict[tuple[str, str], asyncpg.Record]:
    """(run, score name) → how many items improved, regressed or stayed equal."""
    return {(r["run_id"], r["name"]): r
            for r in await conn.fetch(_SCORE_CHANGES_SQL, list(run_ids), baseline,
                                      views.PASS_THRESHOLD)}


async def score_summaries(conn: asyncpg.Connection,
                          run_ids: Sequence[str]) -> dict[tuple[str, str], dict]:
    """(run, score name) → average, pass rate and count, as in the run summaries."""
    return {(r["run_id"], r["score_name"]): dict(r)
            for r in await conn.fetch(_SCORE_SUMMARIES_SQL, list(run_ids))}


def score_comparison(run_ids: Sequence[str], baseline: str,
                     by_name: dict[tuple[str, str], dict],
                     changes: dict[tuple[str, str], asyncpg.Record]) -> list[dict]:
    """Per score name (alphabetical): each run's average, pass rate and count (as in its run
    summary), the deltas against the baseline, and how many items improved, regressed or stayed
    equal. The comparison fields are null for the baseline itself and where a side has no value."""
    out = []
    for name in sorted({name for _, name in by_name}):
        base = by_name.get((baseline, name))
        entries = []
        for run_id in run_ids:
            own = by_name.get((run_id, name))
            entry = {"run_id": run_id,
                     "average": own["average"] if own else None,
                     "pass_rate": own["pass_rate"] if own else None,
                     "count": own["count"] if own else 0}
            if own and own.get("labels"):
                entry["labels"] = own["labels"]
            if run_id == baseline:
                entry |= {"delta_average": None, "delta_pass_rate": None,
                          "improvements": None, "regressions": None, "unchanged": None,
                          "paired": None}
            else:
                counted = changes.get((run_id, name))
                entry |= {
                    "delta_average": _delta(entry["average"], base and base["average"]),
                    "delta_pass_rate": _delta(entry["pass_rate"], base and base["pass_rate"]),
                    "improvements": counted["improvements"] if counted else 0,
                    "regressions": counted["regressions"] if counted else 0,
                    "unchanged": counted["unchanged"] if counted else 0,
                    "paired": paired(counted)}
            entries.append(entry)
        out.append({"name": name, "runs": entries})
    return out


def _matching_items_sql(item_filter: ItemFilter | None, score: str | None, baseline: str,
                        param: Callable[[object], str]) -> str:
    """A query of the ids of the dataset's items the filter keeps ($1 dataset, $2 runs)."""
    if item_filter is None:
        return "SELECT id FROM dataset_items WHERE dataset_id = $1"
    if item_filter == "status_changed":
        # A status differs from the baseline's exactly when the runs' statuses are not all equal.
        return """
            SELECT d.id FROM dataset_items d
            CROSS JOIN unnest($2::text[]) AS r(run_id)
            LEFT JOIN run_items ri ON ri.run_id = r.run_id AND ri.dataset_item_id = d.id
            WHERE d.dataset_id = $1
            GROUP BY d.id
            HAVING min(coalesce(ri.status, 'missing')) <> max(coalesce(ri.status, 'missing'))"""
    of_name = f" AND name = {param(score)}" if score is not None else ""
    base = param(baseline)
    worse_or_better = "<" if item_filter == "regressions" else ">"
    return f"""
        SELECT DISTINCT c.id
        FROM unnest($2::text[]) AS o(run_id)
        CROSS JOIN LATERAL (
            SELECT s.dataset_item_id AS id
            FROM (SELECT dataset_item_id, name, avg(value) AS value FROM scores
                  WHERE run_id = o.run_id AND dataset_item_id IS NOT NULL{of_name}
                    AND data_type <> 'categorical'
                  GROUP BY dataset_item_id, name) s
            JOIN (SELECT dataset_item_id, name, avg(value) AS value FROM scores
                  WHERE run_id = {base} AND dataset_item_id IS NOT NULL{of_name}
                    AND data_type <> 'categorical'
                  GROUP BY dataset_item_id, name) b
              ON b.dataset_item_id = s.dataset_item_id AND b.name = s.name
            WHERE s.value {worse_or_better} b.value
        ) c
        WHERE o.run_id <> {base}
          AND EXISTS (SELECT 1 FROM dataset_items d WHERE d.id = c.id AND d.dataset_id = $1)"""


def _item_page_sql(item_filter: ItemFilter | None, score: str | None,
                   baseline: str) -> tuple[str, list]:
    """$1 dataset, $2 runs, $3/$4 limit/offset; further parameters are returned in order."""
    params: list = []

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params) + 4}"

    matching = _matching_items_sql(item_filter, score, baseline, param)
    # The count comes from a one-row side so that an empty page still says how many match.
    return f"""
WITH matching AS ({matching}),
page AS (SELECT id FROM matching ORDER BY id LIMIT $3 OFFSET $4)
SELECT t.total, d.id, d.input, d.expected_output, ri.run_id, ri.status, ri.output, ri.error,
       ri.trace_id, ri.latency_ms, ri.cost, sc.scores
FROM (SELECT count(*) AS total FROM matching) t
LEFT JOIN (page p
    JOIN dataset_items d ON d.dataset_id = $1 AND d.id = p.id
    LEFT JOIN run_items ri ON ri.dataset_item_id = p.id AND ri.run_id = ANY($2::text[])
    LEFT JOIN LATERAL (
        SELECT jsonb_object_agg(name, value) AS scores
        FROM (SELECT name, {views.ITEM_SCORE_JSON} AS value FROM scores
              WHERE run_item_id = ri.run_item_id GROUP BY name) n
    ) sc ON true
) ON true
ORDER BY d.id
""", params


def _changed(scores: dict, base: dict, better: bool) -> list[str]:
    """Names whose value is higher (`better`) or lower than the baseline's; a label (of a
    categorical score) is neither."""
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return sorted(n for n, v in scores.items()
                  if number(v) and number(base.get(n)) and (v > base[n] if better else v < base[n]))


async def item_comparison(conn: asyncpg.Connection, dataset_id: str, run_ids: Sequence[str],
                          baseline: str, *, item_filter: ItemFilter | None = None,
                          score: str | None = None, limit: int = 50, offset: int = 0,
                          trace_url: Callable[[str], str] | None = None) -> dict:
    """One page of the dataset's items (in id order) with each run's status, output and scores
    side by side; `item_filter` keeps regressions, improvements (of `score`, if given) or items
    whose status differs from the baseline's."""
    sql, params = _item_page_sql(item_filter, score, baseline)
    rows = await conn.fetch(sql, dataset_id, list(run_ids), limit, offset, *params)
    total = rows[0]["total"]
    by_item: dict[str, dict] = {}
    for row in rows:
        if row["id"] is None:  # the count's row when the page is empty
            continue
        item = by_item.setdefault(row["id"], {
            "dataset_item_id": row["id"], "input": row["input"],
            "expected_output": row["expected_output"], "by_run": {}})
        if row["run_id"] is not None:
            item["by_run"][row["run_id"]] = row
    items = []
    for item in by_item.values():
        by_run = item.pop("by_run")
        base = by_run.get(baseline)
        base_scores = (base["scores"] or {}) if base else {}
        base_status = base["status"] if base else MISSING
        entries = []
        for run_id in run_ids:
            row = by_run.get(run_id)
            if row is None:
                entries.append({"run_id": run_id, "status": MISSING, "output": None,
                                "error": None, "trace_id": None, "trace_url": None,
                                "latency_ms": None, "cost": None, "scores": {},
                                "improved": [], "regressed": []})
                continue
            scores = row["scores"] or {}
            is_base = run_id == baseline
            entries.append({
                "run_id": run_id, "status": row["status"], "output": row["output"],
                "error": row["error"], "trace_id": row["trace_id"],
                "trace_url": trace_url(row["trace_id"]) if trace_url else None,
                "latency_ms": row["latency_ms"], "cost": row["cost"], "scores": scores,
                "improved": [] if is_base else _changed(scores, base_scores, True),
                "regressed": [] if is_base else _changed(scores, base_scores, False)})
        items.append({
            **item, "runs": entries,
            "status_changed": any(e["status"] != base_status for e in entries),
            "improved": any(e["improved"] for e in entries),
            "regressed": any(e["regressed"] for e in entries)})
    next_offset = offset + limit if offset + limit < total else None
    return {"total": total, "limit": limit, "offset": offset, "next_offset": next_offset,
            "filter": item_filter, "score": score, "items": items}


async def read_tuned(conn: asyncpg.Connection) -> None:
    # The comparison reads a run's slice of the scores index; with the default page costs
    # (spinning disks) the planner prefers scanning the whole table once a run is a large part
    # of it, which is three times slower on cached or solid-state storage.
    await conn.execute("SET LOCAL random_page_cost = 1.1; SET LOCAL work_mem = '32MB'")


@contextlib.asynccontextmanager
async def _same_snapshot(pool: asyncpg.Pool,
                         conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection | None]:
    """A second connection reading exactly what `conn`'s transaction reads, or None when the
    pool has none to spare (never waiting for one: two requests each holding one connection and
    waiting for a second would deadlock)."""
    if pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size():
        yield None
        return
    try:
        helper = await pool.acquire(timeout=0.05)
    except (TimeoutError, asyncpg.InterfaceError):  # none after all, or the pool is closing
        yield None
        return
    try:
        snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
        async with helper.transaction(isolation="repeatable_read", readonly=True):
            await helper.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            await read_tuned(helper)
            yield helper
    finally:
        await pool.release(helper)


async def compare_runs(pool: asyncpg.Pool, run_ids: Sequence[str], baseline: str | None, *,
                       sections: Sequence[str] = SECTIONS, item_filter: ItemFilter | None = None,
                       score: str | None = None, limit: int = 50, offset: int = 0,
                       trace_url: Callable[[str], str] | None = None) -> dict:
    """The comparison of runs of one dataset against `baseline` (validated: InvalidQuery; see
    `resolve` when it is None).

    Every section is read in one snapshot, so they agree with each other while events arrive;
    the run summaries and the per-item work run on two connections at once when the pool has
    one to spare."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                         readonly=True):
        await read_tuned(conn)
        dataset_id, run_ids, baseline = await resolve(conn, run_ids, baseline)
        out: dict = {"dataset_id": dataset_id, "baseline": baseline, "run_ids": list(run_ids)}

        async def summaries_on(c: asyncpg.Connection) -> dict[str, dict] | None:
            if "runs" in sections:
                return await views.run_summaries(c, list(run_ids))
            return None

        async def per_item_on(c: asyncpg.Connection) -> tuple[dict | None, dict | None]:
            changes = await score_changes(c, run_ids, baseline) if "scores" in sections else None
            page = await item_comparison(
                c, dataset_id, run_ids, baseline, item_filter=item_filter, score=score,
                limit=limit, offset=offset, trace_url=trace_url) if "items" in sections else None
            return changes, page

        async with _same_snapshot(pool, conn) as helper:
            if helper is None:
                summaries = await summaries_on(conn)
                changes, page = await per_item_on(conn)
            else:
                # A TaskGroup, so that when one side fails the other is stopped before its
                # connection's transaction ends.
                async with asyncio.TaskGroup() as tasks:
                    summarising = tasks.create_task(summaries_on(conn))
                    comparing = tasks.create_task(per_item_on(helper))
                summaries, (changes, page) = summarising.result(), comparing.result()
        if summaries is not None:
            out["runs"] = [{**summaries[r], "is_baseline": r == baseline} for r in run_ids]
        if changes is not None:
            by_name = ({(run_id, name): figures for run_id, summary in summaries.items()
                        for name, figures in summary["scores"].items()}
                       if summaries is not None else await score_summaries(conn, run_ids))
            out["scores"] = score_comparison(run_ids, baseline, by_name, changes)
        if page is not None:
            out["items"] = page
    return out
