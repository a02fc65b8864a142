"""The query API over the read models (dashboards, SDKs, the README's curl examples): runs, their
results, run comparisons and datasets. A bad query parameter gets a 4xx naming it."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request

from services.projections import comparison, views
from services.projections.views import InvalidQuery

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, description="Items to skip.")]


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


@router.get("/runs/{run_id}/results")
async def get_run_results(
    run_id: str, request: Request, limit: Limit = 100, offset: Offset = 0,
    sort: Annotated[str, Query(description="dataset_item_id, latency_ms, cost, completed_at, "
                                           "status, or score:<score name>")] = "dataset_item_id",
    order: Literal["asc", "desc"] = "asc",
    filter: Annotated[Literal["passed", "failed"] | None, Query(
        description="passed: scored and every score passes (>= 0.5); failed: a score does "
                    "not. Only scores named `score` count when it is given.")] = None,
    score: Annotated[str | None, Query(description="Score name `filter` looks at.")] = None,
    status: Annotated[Literal["succeeded", "failed"] | None,
                      Query(description="Trace status.")] = None,
) -> dict:
    """A page of the run's items with their scores embedded and a link to each trace."""
    async with request.app.state.pool.acquire() as conn:
        try:
            page = await views.run_results_page(
                conn, run_id, limit=limit, offset=offset, sort=sort,
                descending=order == "desc", outcome=filter, score=score, status=status)
        except InvalidQuery as e:
            raise _invalid(e) from None
        if page["total"] == 0 and await conn.fetchval(
                "SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            raise _error("path", "run_id", f"run {run_id} not found", 404)
    trace_url = _trace_url(request)
    for item in page["items"]:
        item["trace_url"] = trace_url(item["trace_id"])
    return {"run_id": run_id, **_paged(page, limit, offset)}


@router.get("/compare")
async def compare(
    request: Request,
    runs: Annotated[str, Query(description="Comma-separated ids of 2-10 runs of one dataset.",
                               examples=["run-a,run-b"])],
    baseline: Annotated[str | None, Query(
        description="The run the others are compared with; default: the first.")] = None,
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
async def get_dataset_runs(dataset_id: str, request: Request, limit: Limit = 100,
                           offset: Offset = 0) -> dict:
    """The dataset's runs, newest first, each with its run summary."""
    async with request.app.state.pool.acquire() as conn:
        await _known_dataset(conn, dataset_id)
        page = await views.dataset_runs(conn, dataset_id, limit=limit, offset=offset)
    return {"dataset_id": dataset_id, **_paged(page, limit, offset)}


@router.get("/datasets/{dataset_id}/items")
async def get_dataset_items(dataset_id: str, request: Request, limit: Limit = 100,
                            offset: Offset = 0) -> dict:
    """The dataset's items in id order."""
    async with request.app.state.pool.acquire() as conn:
        await _known_dataset(conn, dataset_id)
        page = await views.dataset_items(conn, dataset_id, limit=limit, offset=offset)
    return {"dataset_id": dataset_id, **_paged(page, limit, offset)}
