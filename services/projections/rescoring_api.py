"""Query routes of rescoring: score request progress, score history, and which schema the live
read models are in (it changes when `evalstream projections rebuild` switches)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from services.projections import rescoring_views

router = APIRouter(prefix="/v1")


def _not_found(field: str, message: str) -> HTTPException:
    return HTTPException(404, [{"loc": ["path", field], "msg": message, "type": "not_found"}])


@router.get("/score-requests/{request_id}")
async def get_score_request(request_id: str, request: Request) -> dict:
    """Progress of `POST /v1/runs/{id}/evaluate` or `evalstream replay`: requested, completed
    (scored, failed, unscored), and done once every requested case has been handled."""
    async with request.app.state.pool.acquire() as conn:
        progress = await rescoring_views.score_request_progress(conn, request_id)
    if progress is None:
        raise _not_found("request_id", f"score request {request_id} not found (yet)")
    return progress


@router.get("/runs/{run_id}/items/{dataset_item_id}/scores/history")
async def get_score_history(run_id: str, dataset_item_id: str, request: Request) -> dict:
    """The item's scores, each with every value it has had and the evaluator version behind it."""
    async with request.app.state.pool.acquire() as conn:
        history = await rescoring_views.run_item_score_history(conn, run_id, dataset_item_id)
    if history is None:
        raise _not_found("dataset_item_id", f"run {run_id} has no item {dataset_item_id}")
    return history


@router.get("/read-model")
async def get_read_model(request: Request) -> dict:
    """The schema this query API reads, i.e. the live read models."""
    live = request.app.state.live_read_model
    return {"name": live.name, "schema": live.schema}
