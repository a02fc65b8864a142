"""The query API over the read models (dashboards, SDKs, the README's curl examples)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from services.projections import views

router = APIRouter(prefix="/v1")


@router.get("/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict:
    async with request.app.state.pool.acquire() as conn:
        summary = await views.run_summary(conn, run_id)
    if summary is None:
        raise HTTPException(404, f"run {run_id} not found")
    return summary


@router.get("/runs/{run_id}/results")
async def get_run_results(run_id: str, request: Request) -> dict:
    async with request.app.state.pool.acquire() as conn:
        results = await views.run_results(conn, run_id)
        if not results and await conn.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id) is None:
            raise HTTPException(404, f"run {run_id} not found")
    template = request.app.state.settings.trace_url_template
    for item in results:
        item["trace_url"] = template.format(trace_id=item["trace_id"])
    return {"run_id": run_id, "items": results}
