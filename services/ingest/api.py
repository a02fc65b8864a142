"""The command side's HTTP API: datasets, items, runs and traces in; events out."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, Response, status
from fastapi.routing import APIRoute
from pydantic import ValidationError

from schemas.catalog import DatasetItemsDeleted
from schemas.scores import ScoreRecorded, ScoreRetracted
from services.evaluator import plugins, trial
from services.ingest import rescoring, scoring_rules
from services.ingest.catalog import Catalog
from services.ingest.commands import (
    CreateDataset,
    DeleteItems,
    EvaluateRun,
    PostTraces,
    RecordScore,
    RecordScores,
    RetractScore,
    SetBaseline,
    SetScoringRule,
    Specs,
    StartRun,
    TryEvaluators,
    UpsertItems,
)
from services.messaging import EventPublisher

router = APIRouter(prefix="/v1")


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def publisher(request: Request) -> EventPublisher:
    return request.app.state.publisher


CatalogDep = Annotated[Catalog, Depends(catalog)]


@router.get("/evaluators")
async def list_evaluators() -> dict:
    """The evaluator types this ingest accepts in specs (built in, and those of the plugins it
    loaded: EVALSTREAM_EVALUATOR_PLUGINS), with their version and options as JSON Schema."""
    return {"evaluators": plugins.describe()}


@router.post("/evaluators/try")
async def try_evaluators(cmd: TryEvaluators, request: Request) -> dict:
    """Score up to 100 outputs with the given specs, as the evaluator would — built-in types,
    plugins, and the LLM judge if this ingest has EVALSTREAM_LLM_JUDGE__BASE_URL — and answer
    with each case's scores (value, label, passed, comment) and failures. Nothing is published
    or stored: for writing a spec against examples before a dataset uses it."""
    try:
        results = await trial.try_specs(cmd.evaluators, [c.model_dump() for c in cmd.cases],
                                        request.app.state.settings)
    except trial.TrialTimeout as e:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(e)) from None
    return {"results": results}


@router.post("/datasets", status_code=status.HTTP_201_CREATED)
async def create_dataset(cmd: CreateDataset, catalog: CatalogDep) -> dict:
    event = await catalog.create_dataset(cmd)
    return {"id": event.dataset_id, "name": event.name,
            "evaluators": [s.model_dump(exclude_none=True) for s in event.evaluators]}


@router.put("/datasets/{dataset_id}/evaluators")
async def configure_evaluators(dataset_id: str, specs: Annotated[Specs, Body()],
                               catalog: CatalogDep) -> dict:
    event = await catalog.configure_evaluators(dataset_id, specs)
    return {"dataset_id": dataset_id,
            "evaluators": [s.model_dump(exclude_none=True) for s in event.evaluators]}


@router.get("/scoring-rules")
async def list_scoring_rules(catalog: CatalogDep) -> dict:
    """Every scoring rule, enabled or not, by name."""
    async with catalog.pool.acquire() as conn:
        return {"rules": await scoring_rules.list_rules(conn)}


@router.get("/scoring-rules/{name}")
async def get_scoring_rule(name: str, catalog: CatalogDep) -> dict:
    async with catalog.pool.acquire() as conn:
        return await scoring_rules.get_rule(conn, name)


@router.put("/scoring-rules/{name}")
async def set_scoring_rule(name: Annotated[str, Path(min_length=1, max_length=200)],
                           cmd: SetScoringRule, catalog: CatalogDep) -> dict:
    """Create or replace a scoring rule: traces posted from now on outside runs and datasets
    whose metadata matches `where` are scored by its evaluators, a `sample_rate` share of them
    (chosen by trace id). An enabled rule may not give a score name another enabled rule gives
    (a 422 naming the evaluator)."""
    return await catalog.set_scoring_rule(name, cmd)


@router.delete("/scoring-rules/{name}", status_code=status.HTTP_202_ACCEPTED)
async def delete_scoring_rule(name: str, catalog: CatalogDep) -> dict:
    """Traces posted from now on are not scored by the rule; the scores it gave stay."""
    event = await catalog.delete_scoring_rule(name)
    return {"name": name, "deleted_at": event.deleted_at}


@router.put("/datasets/{dataset_id}/baseline")
async def set_baseline(dataset_id: str, cmd: SetBaseline, catalog: CatalogDep) -> dict:
    """Choose the run the dataset's other runs are compared with by default (`GET /v1/compare`
    with one run, `evalstream check --baseline pinned`); `{"run_id": null}` undoes it."""
    event = await catalog.set_baseline(dataset_id, cmd.run_id)
    return {"dataset_id": dataset_id, "baseline_run_id": event.run_id, "set_at": event.set_at}


@router.post("/datasets/{dataset_id}/items", status_code=status.HTTP_201_CREATED)
async def upsert_items(dataset_id: str, cmd: UpsertItems, catalog: CatalogDep) -> dict:
    event = await catalog.upsert_items(dataset_id, cmd)
    return {"dataset_id": dataset_id, "ids": [i.id for i in event.items]}


@router.post("/runs", status_code=status.HTTP_201_CREATED)
async def start_run(cmd: StartRun, catalog: CatalogDep) -> dict:
    event = await catalog.start_run(cmd)
    return {"id": event.run_id, "dataset_id": event.dataset_id, "name": event.name,
            "total_items": event.total_items,
            "evaluators": [s.model_dump(exclude_none=True) for s in event.evaluators]}


@router.delete("/datasets/{dataset_id}", status_code=status.HTTP_202_ACCEPTED)
async def delete_dataset(dataset_id: str, catalog: CatalogDep) -> dict:
    """Delete a dataset with its items and every run of it (as `DELETE /v1/runs/{id}` does);
    items, evaluators, runs and traces naming it are refused from now on. Deleting again is
    harmless."""
    event, runs = await catalog.delete_dataset(dataset_id)
    return {"dataset_id": dataset_id, "deleted_at": event.deleted_at, "runs_deleted": runs}


@router.delete("/datasets/{dataset_id}/items/{item_id}", status_code=status.HTTP_202_ACCEPTED)
async def delete_item(dataset_id: str, item_id: str, catalog: CatalogDep) -> dict:
    """Remove one item from a dataset: runs started from now on do not count it and traces can
    no longer name it; runs that traced it keep its trace and scores. Upserting it again brings
    it back."""
    return _removed(await catalog.delete_items(dataset_id, [item_id]))


@router.post("/datasets/{dataset_id}/items/delete", status_code=status.HTTP_202_ACCEPTED)
async def delete_items(dataset_id: str, cmd: DeleteItems, catalog: CatalogDep) -> dict:
    """Remove up to 1,000 items at once, all or none: an id not in the dataset is a 404 naming
    it (`ids.<n>`), and nothing is removed."""
    return _removed(await catalog.delete_items(dataset_id, cmd.ids))


def _removed(event: DatasetItemsDeleted) -> dict:
    return {"dataset_id": event.dataset_id, "item_ids": list(event.item_ids),
            "deleted_at": event.deleted_at}


@router.delete("/runs/{run_id}", status_code=status.HTTP_202_ACCEPTED)
async def delete_run(run_id: str, catalog: CatalogDep) -> dict:
    """Delete a run: its summary, results, scores and history leave the read models (and the
    dashboards) shortly after; its traces, verdicts and rescorings are refused from now on.
    The log keeps its events until its retention removes them. Deleting again is harmless."""
    event = await catalog.delete_run(run_id)
    return {"run_id": run_id, "dataset_id": event.dataset_id, "deleted_at": event.deleted_at}


class _TracesRequest(Request):
    """A request whose body, when it is a valid PostTraces, is parsed and validated in one step
    by pydantic's JSON parser rather than by json.loads and then validate_python. FastAPI takes
    the body from `json()` and validates it as before, but pydantic passes a model instance
    through unchanged, so the work is not done twice.

    Any other body is parsed again by json.loads, exactly as FastAPI would, so every refusal
    keeps its answer (422 naming the field, invalid JSON at its position, 400 for a body that is
    not text), and so do the few bodies pydantic refuses but json.loads and validation accept (a
    UTF-8 BOM, UTF-16, lone surrogates, nesting deeper than 255)."""

    async def json(self) -> Any:
        body = await self.body()
        try:
            cmd = PostTraces.model_validate_json(body)
        except ValidationError:
            return await super().json()
        # The one body the JSON parser accepts that the usual path refuses: an integer too large
        # for a float (10**400) as a cost or latency, which the parser reads as infinity.
        if any(t.cost == math.inf or t.latency_ms == math.inf for t in cmd.traces):
            return await super().json()
        return cmd


class _TracesRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def traces_handler(request: Request) -> Response:
            return await handler(_TracesRequest(request.scope, request.receive))

        return traces_handler


async def post_traces(cmd: PostTraces, catalog: CatalogDep,
                      publisher: Annotated[EventPublisher, Depends(publisher)]) -> dict:
    """Accepted once the broker has acknowledged every trace (acks=all)."""
    envelopes = await catalog.complete_traces(cmd.traces)
    await rescoring.publish_traces(catalog.pool, publisher, envelopes)
    return {"accepted": len(envelopes)}


# Declared as `@router.post` would (same place in the OpenAPI document), with the route class
# that parses the body in one step.
router.add_api_route("/traces", post_traces, methods=["POST"],
                     status_code=status.HTTP_202_ACCEPTED, route_class_override=_TracesRoute)


@router.post("/runs/{run_id}/evaluate", status_code=status.HTTP_202_ACCEPTED)
async def evaluate_run(run_id: str, catalog: CatalogDep,
                       cmd: Annotated[EvaluateRun | None, Body()] = None) -> dict:
    """Run evaluators again on every succeeded item of the run, with the given specs or the
    run's own; scores of the same item, name and source are replaced, earlier values kept as
    history. Progress: `GET /v1/score-requests/{request_id}` on the query API."""
    accepted = await rescoring.evaluate_run(
        catalog.pool, catalog.settings, run_id, cmd.evaluators if cmd else None,
        dataset_item_ids=cmd.dataset_item_ids if cmd else None,
        trace_ids=cmd.trace_ids if cmd else None)
    return {"request_id": accepted.request_id, "run_id": run_id,
            "requested": accepted.requested,
            "evaluators": [s.model_dump(exclude_none=True) for s in accepted.evaluators]}


def _verdict_answer(score: ScoreRecorded) -> dict:
    return {"score_id": score.score_id, "run_item_id": score.run_item_id, "run_id": score.run_id,
            "dataset_item_id": score.dataset_item_id, "trace_id": score.trace_id,
            "name": score.name, "source": score.source, "value": score.value,
            "data_type": score.data_type, "string_value": score.string_value,
            "observed_at": score.observed_at}


@router.post("/scores/batch", status_code=status.HTTP_202_ACCEPTED)
async def record_scores(cmd: RecordScores, catalog: CatalogDep,
                        publisher: Annotated[EventPublisher, Depends(publisher)]) -> dict:
    """Up to 1,000 verdicts as `POST /v1/scores` takes one: all are checked first (a wrong one is
    a 422 naming `scores.<n>.<field>`, and none is taken), then published together. Accepted once
    the broker has every one."""
    envelopes = await rescoring.manual_scores(catalog.pool, cmd.scores)
    await publisher.publish(publisher.settings.topics.scores, envelopes)
    return {"accepted": len(envelopes),
            "scores": [_verdict_answer(env.event) for env in envelopes]}  # type: ignore[arg-type]


@router.post("/scores/retract", status_code=status.HTTP_202_ACCEPTED)
async def retract_score(cmd: RetractScore, catalog: CatalogDep,
                        publisher: Annotated[EventPublisher, Depends(publisher)]) -> dict:
    """Take back a person's verdict on a run item (the `name` given, `manual` by default): it
    leaves the run's scores and summary, its value stays in the score's history, and a verdict
    given later counts again. Accepted once the broker has it."""
    env = await rescoring.retract_score(catalog.pool, cmd)
    event: ScoreRetracted = env.event  # type: ignore[assignment]
    await publisher.publish(publisher.settings.topics.scores, [env])
    return {"score_id": event.score_id, "run_item_id": event.run_item_id,
            "run_id": event.run_id, "dataset_item_id": event.dataset_item_id,
            "trace_id": event.trace_id, "name": event.name, "retracted_at": event.retracted_at}


@router.post("/scores", status_code=status.HTTP_202_ACCEPTED)
async def record_score(cmd: RecordScore, catalog: CatalogDep,
                       publisher: Annotated[EventPublisher, Depends(publisher)]) -> dict:
    """A person's verdict on a run item (source `manual`); posting again with the same name
    replaces the verdict, and the earlier one stays in history. Accepted once the broker has it."""
    env = await rescoring.manual_score(catalog.pool, cmd)
    await publisher.publish(publisher.settings.topics.scores, [env])
    return _verdict_answer(env.event)  # type: ignore[arg-type]


