"""`evalstream collect DATASET`: production traces (posted outside any run) become a dataset's
items — the failures a scoring rule or a person found, kept as test cases so that the next run
of the agent is scored on them.

The traces come from the query API (`GET /v1/traces`, filtered as it filters, newest first, or
named by id), and go to `POST /v1/datasets/{id}/items` 1,000 a call (services/upload.py). An
item's id is its trace's id, so collecting a trace again updates its item rather than adding
another; its input is the trace's input, its metadata the trace's with `source_trace_id`, and its
expected output the trace's output only when asked (`expected="output"`: a person confirmed the
output is right), else none — to be filled in before exact-match evaluators can score it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal
from urllib.parse import quote

import httpx

from services.client import ApiError, QueryApi
from services.upload import UploadError, upload

Expected = Literal["none", "output"]


class CollectError(RuntimeError):
    """The traces cannot be read or the items not written; the message says which and why."""


def as_item(trace: dict, expected: Expected = "none") -> dict[str, Any]:
    """A dataset item (as `POST /v1/datasets/{id}/items` takes it) made of a trace."""
    item: dict[str, Any] = {"id": trace["trace_id"], "input": trace.get("input"),
                            "metadata": {**(trace.get("metadata") or {}),
                                         "source_trace_id": trace["trace_id"]}}
    if expected == "output" and trace.get("output") is not None:
        item["expected_output"] = trace["output"]
    return item


def traces(api: QueryApi, *, trace_ids: Iterable[str] = (), limit: int = 100,
           **filters: str) -> list[dict]:
    """The traces named by id (each must exist), or else the newest `limit` traces outside runs
    that pass `filters` (GET /v1/traces's parameters: since, until, status, filter, score, by,
    group)."""
    named = list(trace_ids)
    if named:
        return [api.get(f"/v1/traces/{quote(t, safe='')}") for t in named]
    out: list[dict] = []
    for page in api.pages("/v1/traces", **filters):
        out += page["items"][:limit - len(out)]
        if len(out) >= limit:
            break
    return out


def collect(api: QueryApi, ingest: httpx.Client, dataset_id: str, *,
            trace_ids: Iterable[str] = (), limit: int = 100, expected: Expected = "none",
            on_chunk: Callable[[int], object] = lambda n: None, **filters: str) -> list[str]:
    """The chosen traces as items of the dataset; returns the items' ids."""
    try:
        found = traces(api, trace_ids=trace_ids, limit=limit, **filters)
        return upload(ingest, quote(dataset_id, safe=""),
                      [(t["trace_id"], as_item(t, expected)) for t in found], on_chunk,
                      unit="trace")
    except (ApiError, UploadError) as e:
        raise CollectError(str(e)) from None
