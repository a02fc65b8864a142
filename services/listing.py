"""`evalstream datasets` and `evalstream runs DATASET`: what the read model holds, as tables for
people finding the id to give `run`, `check`, `compare` or `review` (the query API's
`GET /v1/datasets` and `GET /v1/datasets/{id}/runs`, newest first); and a dataset named by its
name where an id is asked for (`run`, `runs`)."""

from __future__ import annotations

from services.client import ApiError, QueryApi
from services.compare import columns, percent


def _when(ts: str | None) -> str:
    return "—" if not ts else ts[:16].replace("T", " ")


def dataset_id(api: QueryApi, id_or_name: str) -> str:
    """The dataset with this id, or else the one with this name (ApiError when none is, or
    when several are: names need not be unique)."""
    try:
        return api.get(f"/v1/datasets/{id_or_name}")["id"]
    except ApiError as e:
        if e.kind != "not_found":
            raise
    named: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = api.get("/v1/datasets", limit="1000", offset=str(offset))
        named += [d["id"] for d in page["datasets"] if d["name"] == id_or_name]
        offset = page["next_offset"]
    if not named:
        raise ApiError(f"no dataset has the id or the name {id_or_name!r}", "not_found")
    if len(named) > 1:
        raise ApiError(f"{len(named)} datasets are named {id_or_name!r}; give one's id: "
                         f"{', '.join(named)}")
    return named[0]


def datasets(api: QueryApi, limit: int) -> tuple[list[dict], int]:
    page = api.get("/v1/datasets", limit=str(limit))
    return page["datasets"], page["total"]


def runs(api: QueryApi, dataset: str, limit: int) -> tuple[list[dict], int]:
    page = api.get(f"/v1/datasets/{dataset_id(api, dataset)}/runs", limit=str(limit))
    return page["runs"], page["total"]


def render_datasets(rows: list[dict], total: int) -> str:
    table = [["id", "name", "items", "runs", "baseline run", "last run"]]
    table += [[d["id"], d["name"], str(d["item_count"]), str(d["run_count"]),
               d["baseline_run_id"] or "—", _when(d["last_run_at"])] for d in rows]
    return "\n".join(columns(table) + _more(len(rows), total, "datasets"))


def render_runs(rows: list[dict], total: int) -> str:
    """Runs with their items, failures, overall pass rate and each score's pass rate (or, for a
    score without one — categorical labels —, its count)."""
    names = sorted({n for r in rows for n in r["scores"]})
    table = [["id", "name", "started", "items", "failed", "pass rate", *names]]
    for r in rows:
        cells = []
        for n in names:
            s = r["scores"].get(n)
            cells.append("—" if not s else percent(s.get("pass_rate")) if s.get("pass_rate")
                         is not None else f"{s.get('count', 0)} scored")
        table.append([r["id"], r["name"], _when(r["started_at"]),
                      f"{r['completed_items'] + r['failed_items']}/{r['total_items']}",
                      str(r["failed_items"]), percent(r["pass_rate"]), *cells])
    return "\n".join(columns(table) + _more(len(rows), total, "runs"))


def _more(shown: int, total: int, what: str) -> list[str]:
    return [f"({shown} of {total} {what}, newest first; --limit for more)"] \
        if shown < total else []
