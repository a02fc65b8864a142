"""`evalstream rescore RUN [--evaluators FILE] [--only …]`: a run's items (or those an evaluator
failed on, say) scored again — with new evaluator specs (an LLM judge's criteria reworded, a
threshold changed) or the run's own — without running the agent again, through the ingest API
(`POST /v1/runs/{id}/evaluate`), then waiting for the query API to report every case done
(`GET /v1/score-requests/{request id}`). The new values replace the old ones, which stay in each
score's history. The operator's way over the whole log is `evalstream replay`; this one needs only
the two APIs and a key."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from services.client import ApiError, QueryApi, refusal

# `--only`: which items to score again, as the results' `filter` names them.
ONLY = {"evaluator-failures": "evaluator_failed", "failed": "failed", "unscored": "unscored"}


def select(api: QueryApi, run_id: str, only: str, score: str | None = None) -> \
        tuple[list[str], list[str]]:
    """The succeeded items of the run that `only` picks (an evaluator failed on them, a score
    failed, no score; of `score` alone if given), as dataset item ids and, for traces outside a
    dataset, trace ids."""
    items: list[str] = []
    traces: list[str] = []
    for page in api.pages(f"/v1/runs/{run_id}/results", filter=ONLY[only], status="succeeded",
                          **({"score": score} if score else {})):
        for item in page["items"]:
            if item["dataset_item_id"] is not None:
                items.append(item["dataset_item_id"])
            else:
                traces.append(item["trace_id"])
    return items, traces


def request(ingest: httpx.Client, run_id: str, specs: list[dict] | None,
            chosen: tuple[list[str], list[str]] | None = None) -> dict:
    """Ask for the rescoring with `specs` (as the API takes them; None: the run's own), of the
    `chosen` dataset item and trace ids alone if given; the answer has `request_id` and
    `requested` (cases)."""
    body: dict | None = {"evaluators": specs} if specs else None
    if chosen is not None:
        body = (body or {}) | {"dataset_item_ids": chosen[0], "trace_ids": chosen[1]}
    try:
        r = ingest.post(f"/v1/runs/{run_id}/evaluate", json=body)
    except httpx.HTTPError as e:
        raise ApiError(f"ingest API at {ingest.base_url} unreachable: {e}", "unavailable") \
            from None
    if r.status_code != 202:
        raise ApiError(f"POST /v1/runs/{run_id}/evaluate: {refusal(r)}",
                       "not_found" if r.status_code == 404 else "refused")
    return r.json()


def wait(api: QueryApi, request_id: str, *, within: float, poll: float = 0.5,
         on_progress: Callable[[dict], object] = lambda p: None,
         sleep: Callable[[float], object] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> dict:
    """The request's progress once done (ApiError past `within` seconds). The request is not
    known to the query API until its event has been applied: "not found" is asked again."""
    started = clock()
    while True:
        try:
            progress = api.get(f"/v1/score-requests/{request_id}")
        except ApiError as e:
            if e.kind not in ("not_found", "unavailable"):
                raise
            progress = None
        if progress is not None:
            on_progress(progress)
            if progress["done"]:
                return progress
        if clock() - started >= within:
            said = (f"{progress['completed']} of {progress['requested']} cases done"
                    if progress else "the request is not in the read model yet")
            raise ApiError(f"request {request_id} not done after {within:g} s: {said}")
        sleep(poll)
