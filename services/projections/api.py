"""The query API over the read models (dashboards, SDKs, the README's curl examples): runs, their
results, run comparisons and datasets. A bad query parameter gets a 4xx naming it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from services.projections import breakdown, comparison, monitoring, retention, views
from services.projections.views import InvalidQuery

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, description="Items to skip.")]
Runs = Annotated[str, Query(
    description="Comma-separated ids of 2-10 runs of one dataset, or one run of a dataset with a "
                "baseline run.", examples=["run-a,run-b"])]
Baseline = Annotated[str | None, Query(
    description="The run the others are compared with; default: the dataset's baseline run "
                "(PUT /v1/datasets/{id}/baseline) if compared, else the first.")]
By = Annotated[str, Query(
    description="Where each run item's group is read: item.<key> in the dataset item's metadata, "
                "trace.<key> in the trace's; dots go into nested objects. An array value (tags) "
                "puts the item in the group of each element.", examples=["item.category"])]


def _error(where: str, field: str, message: str, status: int) -> HTTPException:
    """FastAPI's own error shape, naming the parameter at fault."""
    return HTTPException(status, [{"loc": [where, field], "msg": message,
                                   "type": "not_found" if status == 404 else "value_error"}])


def _invalid(e: InvalidQuery) -> HTTPException:
    return _error("query", e.field, e.message, e.status)


def _trace_url(request: Request):
    template: str = request.app.state.settings.trace_url_template
    return lambda trace_id: template.format(trace_id=quote(trace_id, safe=""))


def _paged(page: dict, limit: int, offset: int) -> dict:
    """A page (`total` and its rows) with where it starts and where the next one does."""
    return {**page, "limit": limit, "offset": offset,
            "next_offset": offset + limit if offset + limit < page["total"] else None}


@router.get("/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict:
    """A run's summary: items (completed, failed, missing), cost, tokens, latency p50/p95,
    per-score average / pass rate / count and the overall pass rate."""
    async with request.app.state.pool.acquire() as conn:
        summary = await views.run_summary(conn, run_id)
    if summary is None:
        raise _error("path", "run_id", f"run {run_id} not found", 404)
    return summary


@router.get("/runs/{run_id}/scoring")
async def get_run_scoring(run_id: str, request: Request) -> dict:
    """Is the run scored? `traced_items` (items with a trace), `missing_items` (items of the
    dataset without one), `missing_items_at_start` (those of them the dataset already held when
    the run started), `items_pending_scoring` (succeeded items whose latest trace the evaluator
    has not reported on yet) and `scored` (none pending and none missing at start: items added
    since the run started are not waited for, nor items removed)."""
    async with request.app.state.pool.acquire() as conn:
        scoring = await views.run_scoring(conn, run_id)
    if scoring is None:
        raise _error("path", "run_id", f"run {run_id} not found", 404)
    return scoring


def _group_by(by: str) -> breakdown.GroupBy:
    try:
        return breakdown.parse_group_by(by)
    except InvalidQuery as e:
        raise _invalid(e) from None


GroupOf = Annotated[str | None, Query(
    description="With `group`: only the items of one group of a breakdown by this key "
                "(item.<key> or trace.<key>, as /breakdown takes).", examples=["item.category"])]
GroupValue = Annotated[str | None, Query(
    description="With `by`: the group's value as text (a string as is, a number's digits, "
                "true/false); an item whose value is an array is in the group of each element.")]


def _group(by: str | None, group: str | None) -> views.Group | None:
    """The group `by` and `group` name together, or None when neither is given."""
    if by is None and group is None:
        return None
    if by is None or group is None:
        missing = "by" if by is None else "group"
        raise _error("query", missing, "give both by (a metadata key) and group (its value)",
                     422)
    key = _group_by(by)
    return key.source, list(key.path), group


@router.get("/runs/{run_id}/breakdown")
async def get_run_breakdown(run_id: str, request: Request, by: By, limit: Limit = 100,
                            offset: Offset = 0) -> dict:
    """The run's figures per value of a metadata key (a page of groups, in value order, the
    items with no value last): items, completed, failed, cost, tokens, latency p50/p95, items
    with scores, pass rate, evaluator failures and per score name average, pass rate and
    count."""
    group_by = _group_by(by)
    async with request.app.state.pool.acquire() as conn:
        if await conn.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            raise _error("path", "run_id", f"run {run_id} not found", 404)
        return await breakdown.run_breakdown(conn, run_id, group_by, limit=limit, offset=offset)


@router.get("/runs/{run_id}/results")
async def get_run_results(
    run_id: str, request: Request, limit: Limit = 100, offset: Offset = 0,
    sort: Annotated[str, Query(description="dataset_item_id, latency_ms, cost, completed_at, "
                                           "status, or score:<score name>")] = "dataset_item_id",
    order: Literal["asc", "desc"] = "asc",
    filter: Annotated[views.Outcome | None, Query(
        description="passed: scored and every score passes (>= its pass_threshold, default "
                    "0.5; labels neither pass nor fail); failed: a score does "
                    "not; unscored: no score (e.g. `score=manual&status=succeeded`: the items "
                    "awaiting a person's verdict); evaluator_failed: an evaluator failed on the "
                    "item (what `evalstream rescore --only evaluator-failures` scores again). "
                    "Only scores (and evaluators) named `score` count when it is given.")] = None,
    score: Annotated[str | None, Query(description="Score name `filter` looks at.")] = None,
    status: Annotated[Literal["succeeded", "failed"] | None,
                      Query(description="Trace status.")] = None,
    by: GroupOf = None, group: GroupValue = None,
) -> dict:
    """A page of the run's items with their scores embedded, a link to each trace, and the
    item's and the trace's metadata; `by` and `group` keep one group of a breakdown."""
    in_group = _group(by, group)
    async with request.app.state.pool.acquire() as conn:
        try:
            page = await views.run_results_page(
                conn, run_id, limit=limit, offset=offset, sort=sort,
                descending=order == "desc", outcome=filter, score=score, status=status,
                group=in_group)
        except InvalidQuery as e:
            raise _invalid(e) from None
        if page["total"] == 0 and await conn.fetchval(
                "SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            raise _error("path", "run_id", f"run {run_id} not found", 404)
    trace_url = _trace_url(request)
    for item in page["items"]:
        item["trace_url"] = trace_url(item["trace_id"])
    return {"run_id": run_id, **_paged(page, limit, offset)}


Outcome = Annotated[views.Outcome | None, Query(
    description="passed: scored and every score passes; failed: a score does not; unscored: no "
                "score; evaluator_failed: an evaluator failed on the trace. Only scores (and "
                "evaluators) named `score` count when it is given.")]
Since = Annotated[datetime | None, Query(
    description="Traces completed at or after this time (ISO 8601; without a zone: UTC).",
    examples=["2026-11-22T00:00:00Z"])]
Until = Annotated[datetime | None, Query(
    description="Traces completed before this time (ISO 8601; without a zone: UTC).")]
TraceGroupOf = Annotated[str | None, Query(
    description="With `group`: only the traces of one value of a trace metadata key "
                "(trace.<key>; dots go into nested objects).", examples=["trace.model"])]
TraceStatus = Annotated[Literal["succeeded", "failed"] | None, Query(description="Trace status.")]
OutcomeScore = Annotated[str | None, Query(description="Score name `filter` looks at.")]


def _trace_group(by: str | None, group: str | None) -> views.Group | None:
    """`by` and `group` for traces outside runs, which have no dataset item: trace.<key> only."""
    in_group = _group(by, group)
    if in_group is not None and in_group[0] != "trace":
        raise _error("query", "by", "traces outside runs have no dataset item: give "
                                    "trace.<metadata key>", 422)
    return in_group


def _utc(at: datetime | None) -> datetime | None:
    return None if at is None else monitoring.utc(at)


def _production_window(since: datetime | None, until: datetime | None, by: str | None,
                       group: str | None) -> tuple[datetime | None, datetime | None,
                                                   views.Group | None]:
    """/traces' and /traces.csv's window in UTC and metadata group, or the 422 naming what is
    wrong."""
    in_group = _trace_group(by, group)
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise _error("query", "since", "since must be before until", 422)
    return since, until, in_group


@router.get("/traces/{trace_id:path}")
async def get_trace(trace_id: str, request: Request) -> dict:
    """One trace, in a run or posted outside any (the latest completed run item carrying its
    id): as a run's results give an item — input, expected output, output, status, error,
    latency, tokens, cost, metadata, scores with `passed`, evaluator failures, a link — with its
    run_id, dataset_id, dataset_item_id and run_item_id (null outside a run)."""
    async with request.app.state.pool.acquire() as conn:
        item = await views.trace_result(conn, trace_id)
        kept = await retention.watermark(conn) if item is None else None
    if item is None:
        raise _error("path", "trace_id", f"trace {trace_id} not found" + (
            f" (traces outside runs that completed before {kept.isoformat()} were removed by "
            "retention)" if kept else ""), 404)
    item["trace_url"] = _trace_url(request)(trace_id)
    return item


@router.get("/traces")
async def list_traces(
    request: Request, since: Since = None, until: Until = None,
    status: TraceStatus = None, filter: Outcome = None, score: OutcomeScore = None,
    by: TraceGroupOf = None, group: GroupValue = None,
    limit: Limit = 100, offset: Offset = 0,
) -> dict:
    """A page of the traces posted outside any run (production traffic), newest first, as a
    run's results give its items: scores embedded with `passed`, evaluator failures, metadata,
    a link to each trace; `retained_since`: what completed before it was removed by retention
    (null: nothing ever was)."""
    since, until, in_group = _production_window(since, until, by, group)
    async with request.app.state.pool.acquire() as conn:
        page = await views.production_results_page(
            conn, since=since, until=until, limit=limit, offset=offset, outcome=filter,
            score=score, status=status, group=in_group)
        page["retained_since"] = await retention.watermark(conn)
    trace_url = _trace_url(request)
    for item in page["items"]:
        item["trace_url"] = trace_url(item["trace_id"])
    return _paged(page, limit, offset)


@router.get("/monitoring")
async def get_monitoring(
    request: Request,
    since: Annotated[datetime | None, Query(
        description="Start of the window (ISO 8601; default: until - 24 h).")] = None,
    until: Annotated[datetime | None, Query(
        description="End of the window, excluded (ISO 8601; default: now).")] = None,
    interval: Annotated[monitoring.Interval, Query(
        description=f"Bucket size; at most {monitoring.MAX_BUCKETS:,} buckets a "
                    "window.")] = "hour",
    score: Annotated[str | None, Query(
        description="Count only the scores (and evaluator failures) of this name.")] = None,
    by: TraceGroupOf = None, group: GroupValue = None,
) -> dict:
    """The traces posted outside any run, per bucket of `interval` (its `start`, aligned in
    UTC; buckets without a trace are left out) and over the whole window (`totals`): traces,
    succeeded, failed, scored_traces, evaluation_failures, pass_rate (boolean and numeric
    scores) and per score name average, pass_rate, count and the labels of categorical
    ones. A score counts in the bucket of its trace's completion. `retained_since`: traces
    completed before it were removed by retention (null: none ever were)."""
    in_group = _trace_group(by, group)
    async with request.app.state.pool.acquire() as conn:
        try:
            return await monitoring.monitoring(conn, since=since, until=until,
                                               interval=interval, score=score, group=in_group)
        except InvalidQuery as e:
            raise _invalid(e) from None


# The fixed columns of a results export, then one per score name, then the failures.
CSV_COLUMNS = ["dataset_item_id", "trace_id", "status", "input", "expected_output", "output",
               "error", "latency_ms", "input_tokens", "output_tokens", "cost", "completed_at",
               "trace_url", "item_metadata", "metadata"]
CSV_PAGE = 1000


def _csv_cell(value: Any) -> Any:
    """Text and numbers as they are, times in ISO 8601, other JSON values as JSON, absent as
    empty."""
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, default=str)


def _csv_score(scores: list[dict]) -> str:
    """The item's scores of one name: the label of a categorical score, else the value; several
    (a person's verdict beside an evaluator's, under one name) joined by '; '."""
    return "; ".join(s["string_value"] if s["data_type"] == "categorical" and s["string_value"]
                     else f"{s['value']:g}" for s in scores)


@router.get("/runs/{run_id}/results.csv", response_class=StreamingResponse)
async def get_run_results_csv(
    run_id: str, request: Request,
    sort: Annotated[str, Query(description="As for /results.")] = "dataset_item_id",
    order: Literal["asc", "desc"] = "asc",
    filter: Annotated[views.Outcome | None, Query(description="As for /results.")] = None,
    score: Annotated[str | None, Query(description="As for /results.")] = None,
    status: Annotated[Literal["succeeded", "failed"] | None,
                      Query(description="As for /results.")] = None,
    by: GroupOf = None, group: GroupValue = None,
) -> StreamingResponse:
    """Every item of the run (filtered and sorted as /results, all pages) as CSV, for a
    spreadsheet: the item, trace and output, one column per score name (its value, or a
    categorical score's label) and the evaluators that failed. Read in one snapshot."""
    try:
        sort = views.parse_result_sort(sort)
    except InvalidQuery as e:
        raise _invalid(e) from None
    in_group = _group(by, group)
    pool = request.app.state.pool
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            raise _error("path", "run_id", f"run {run_id} not found", 404)

    async def names(conn) -> list[str]:
        return [r[0] for r in await conn.fetch(
            "SELECT DISTINCT name FROM scores WHERE run_id = $1 ORDER BY name", run_id)]

    def page(conn, offset: int):
        return views.run_results_page(
            conn, run_id, limit=CSV_PAGE, offset=offset, sort=sort, descending=order == "desc",
            outcome=filter, score=score, status=status, group=in_group)

    return _csv_export(request, names, page, f"run-{quote(run_id, safe='')}-results.csv")


def _csv_export(request: Request, names: Callable[[Any], Awaitable[list[str]]],
                page: Callable[[Any, int], Awaitable[dict]], filename: str) -> StreamingResponse:
    """Every page `page(conn, offset)` gives as CSV rows (CSV_COLUMNS, a column per name of
    `names(conn)`, the evaluators that failed), read in one snapshot, sent as it is read."""
    pool = request.app.state.pool
    trace_url = _trace_url(request)

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)

        def flush() -> str:
            text = out.getvalue()
            out.seek(0)
            out.truncate()
            return text

        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                             readonly=True):
            columns = await names(conn)
            writer.writerow([*CSV_COLUMNS, *columns, "evaluation_failures"])
            yield flush()
            offset = 0
            while True:
                current = await page(conn, offset)
                for item in current["items"]:
                    item["trace_url"] = trace_url(item["trace_id"])
                    by_name: dict[str, list[dict]] = {}
                    for s in item["scores"]:
                        by_name.setdefault(s["name"], []).append(s)
                    writer.writerow([
                        *(_csv_cell(item[c]) for c in CSV_COLUMNS),
                        *(_csv_score(by_name.get(n, [])) for n in columns),
                        "; ".join(f"{f['name']}: {f['reason']}"
                                  for f in item["evaluation_failures"])])
                yield flush()
                offset += CSV_PAGE
                if offset >= current["total"]:
                    return

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/traces.csv", response_class=StreamingResponse)
async def get_traces_csv(
    request: Request, since: Since = None, until: Until = None,
    status: TraceStatus = None, filter: Outcome = None, score: OutcomeScore = None,
    by: TraceGroupOf = None, group: GroupValue = None,
) -> StreamingResponse:
    """Every trace posted outside any run that /traces lists for these parameters (all pages,
    newest first) as CSV, as a run's results.csv gives its items: for a spreadsheet of what
    production did and how it scored."""
    since, until, in_group = _production_window(since, until, by, group)

    async def names(conn) -> list[str]:
        return [r[0] for r in await conn.fetch("""
            SELECT DISTINCT s.name FROM run_items r JOIN scores s USING (run_item_id)
            WHERE r.run_id IS NULL
              AND r.completed_at >= coalesce($1::timestamptz, '-infinity')
              AND r.completed_at < coalesce($2::timestamptz, 'infinity')
            ORDER BY 1""", since, until)]

    def page(conn, offset: int):
        return views.production_results_page(
            conn, since=since, until=until, limit=CSV_PAGE, offset=offset, outcome=filter,
            score=score, status=status, group=in_group)

    return _csv_export(request, names, page, "traces-outside-runs.csv")


@router.get("/compare")
async def compare(
    request: Request,
    runs: Runs,
    baseline: Baseline = None,
    filter: Annotated[comparison.ItemFilter | None, Query(
        description="Keep items with a lower (regressions) or higher (improvements) score than "
                    "the baseline's, or whose status differs from the baseline's.")] = None,
    score: Annotated[str | None, Query(
        description="Only this score name counts for regressions/improvements.")] = None,
    include: Annotated[str, Query(
        description="Sections to answer: runs, scores, items.")] = "runs,scores,items",
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 50,
    offset: Offset = 0,
) -> dict:
    """Runs of one dataset side by side against a baseline: per run, per score name (average,
    pass rate, delta, improvements and regressions) and per item (a page)."""
    try:
        run_ids, base = comparison.parse_runs(runs, baseline)
        sections = comparison.parse_sections(include)
        return await comparison.compare_runs(
            request.app.state.pool, run_ids, base, sections=sections, item_filter=filter,
            score=score, limit=limit, offset=offset, trace_url=_trace_url(request))
    except InvalidQuery as e:
        raise _invalid(e) from None


@router.get("/compare/breakdown")
async def compare_breakdown(
    request: Request,
    runs: Runs,
    by: By,
    baseline: Baseline = None,
    limit: Limit = 100, offset: Offset = 0,
) -> dict:
    """Runs of one dataset side by side per value of a metadata key, with each run's deltas
    against the baseline in every group: which category got better or worse."""
    group_by = _group_by(by)
    try:
        run_ids, base = comparison.parse_runs(runs, baseline)
        return await breakdown.compare_breakdown(request.app.state.pool, run_ids, base, group_by,
                                                 limit=limit, offset=offset)
    except InvalidQuery as e:
        raise _invalid(e) from None


@router.get("/datasets")
async def list_datasets(request: Request, limit: Limit = 100, offset: Offset = 0) -> dict:
    """Datasets, newest first, with item count, run count and last run time."""
    async with request.app.state.pool.acquire() as conn:
        page = await views.datasets_page(conn, limit=limit, offset=offset)
    return _paged(page, limit, offset)


@router.get("/datasets/{dataset_id}")
async def get_dataset(dataset_id: str, request: Request) -> dict:
    """A dataset with its counts and the summary of its latest run."""
    async with request.app.state.pool.acquire() as conn:
        dataset = await views.dataset_summary(conn, dataset_id)
    if dataset is None:
        raise _error("path", "dataset_id", f"dataset {dataset_id} not found", 404)
    return dataset


async def _known_dataset(conn, dataset_id: str) -> None:
    if await conn.fetchval("SELECT 1 FROM datasets WHERE id = $1", dataset_id) is None:
        raise _error("path", "dataset_id", f"dataset {dataset_id} not found", 404)


@router.get("/datasets/{dataset_id}/runs")
async def get_dataset_runs(
    dataset_id: str, request: Request, limit: Limit = 100, offset: Offset = 0,
    metadata: Annotated[list[str], Query(
        description="KEY=VALUE (repeatable): only the runs whose metadata has that value at that "
                    "key (dots go into nested objects; the value as text: 3, true; an array "
                    "matches by any element), e.g. branch=main.")] = [],  # noqa: B006
    before: Annotated[datetime | None, Query(
        description="Only the runs started before this time (ISO 8601).")] = None,
) -> dict:
    """The dataset's runs, newest first, each with its run summary; `metadata` and `before`
    keep some of them (the latest run on main before this one: `metadata=branch=main&before=`
    its start, as `evalstream check --baseline latest` asks)."""
    try:
        matches = [views.parse_metadata_match(m) for m in metadata]
    except InvalidQuery as e:
        raise _invalid(e) from None
    async with request.app.state.pool.acquire() as conn:
        await _known_dataset(conn, dataset_id)
        page = await views.dataset_runs(conn, dataset_id, limit=limit, offset=offset,
                                        metadata=matches, before=_utc(before))
    return {"dataset_id": dataset_id, **_paged(page, limit, offset)}


@router.get("/datasets/{dataset_id}/items")
async def get_dataset_items(dataset_id: str, request: Request, limit: Limit = 100,
                            offset: Offset = 0) -> dict:
    """The dataset's items in id order."""
    async with request.app.state.pool.acquire() as conn:
        await _known_dataset(conn, dataset_id)
        page = await views.dataset_items(conn, dataset_id, limit=limit, offset=offset)
    return {"dataset_id": dataset_id, **_paged(page, limit, offset)}
