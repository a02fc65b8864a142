"""`evalstream compare RUN [BASELINE]`: a run against a baseline run of its dataset in the
terminal, as `GET /v1/compare` has it — the summaries side by side, each score's pass rate and
average with the change, how many items got better or worse, and the items that regressed,
improved or changed status (failed or missing in one run only), with their outputs. Without
BASELINE the dataset's baseline run is used (`PUT /v1/datasets/{id}/baseline`)."""

from __future__ import annotations

import json
from typing import Any

from services.client import QueryApi

OUTPUT_CHARS = 60  # of an output, in the lists of items
# The lists of items shown, as /v1/compare's `filter` names them: items a score regressed or
# improved on, and items whose trace failed, or is missing, in one run and not the other.
LISTS = ("regressions", "improvements", "status_changed")


def fetch(api: QueryApi, run_id: str, baseline: str | None, items: int) -> dict:
    """The comparison (runs and scores), and of each of LISTS its count and first `items`."""
    runs = f"{baseline},{run_id}" if baseline else run_id
    base = {"runs": runs, **({"baseline": baseline} if baseline else {})}
    out = api.get("/v1/compare", **base, include="runs,scores")
    for which in LISTS:
        page = api.get("/v1/compare", **base, include="items", filter=which,
                       limit=str(max(items, 1)))["items"]
        out[which] = page | {"items": page["items"][:items]}
    return out


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _points(delta: float | None) -> str:
    return "" if delta is None else f"{100 * delta:+.1f} pts"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return json.dumps(text[:OUTPUT_CHARS] + ("…" if len(text) > OUTPUT_CHARS else ""),
                      ensure_ascii=False)


def columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _changed(item: dict, baseline: str, run_id: str, which: str) -> str:
    before = next(r for r in item["runs"] if r["run_id"] == baseline)
    after = next(r for r in item["runs"] if r["run_id"] == run_id)
    names = {"regressions": after["regressed"], "improvements": after["improved"]}.get(which) or []
    scores = ", ".join(f"{n} {before['scores'].get(n, '—')} → {after['scores'].get(n, '—')}"
                       for n in names)
    if not scores:  # the status changed (a trace that failed, or is missing)
        scores = f"{before['status']} → {after['status']}"

    def shown(r: dict) -> str:
        return _short(r["output"]) if r["status"] == "succeeded" else \
            f"{r['status']}{': ' + _short(r['error']) if r.get('error') else ''}"
    return f"  {item['dataset_item_id']}  {scores}   {shown(before)} → {shown(after)}"


def render(c: dict, run_id: str) -> str:
    """The comparison as text."""
    baseline = c["baseline"]
    runs = {r["id"]: r for r in c["runs"]}
    b, r = runs[baseline], runs[run_id]
    lines = [f"dataset {r['dataset_name']} ({c['dataset_id']}): run {r['name']} ({run_id}) "
             f"against baseline {b['name']} ({baseline})", ""]

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f} ms"
    table = [["", "baseline", "run", "change"],
             ["items completed", f"{b['completed_items']} of {b['total_items']}",
              f"{r['completed_items']} of {r['total_items']}", ""],
             ["items failed", str(b["failed_items"]), str(r["failed_items"]), ""],
             ["pass rate", percent(b["pass_rate"]), percent(r["pass_rate"]),
              _points(None if None in (b["pass_rate"], r["pass_rate"])
                      else r["pass_rate"] - b["pass_rate"])],
             ["cost", f"{b['total_cost'] or 0:g}", f"{r['total_cost'] or 0:g}", ""],
             ["latency p50", ms(b["latency_p50_ms"]), ms(r["latency_p50_ms"]), ""]]
    lines += columns(table) + [""]
    table = [["score", "baseline", "run", "change", "better", "worse", "same"]]
    for score in c["scores"]:
        sb = next(x for x in score["runs"] if x["run_id"] == baseline)
        sr = next(x for x in score["runs"] if x["run_id"] == run_id)

        def cell(x: dict) -> str:
            if not x["count"]:
                return "—"
            avg = "" if x["average"] is None else f" (avg {x['average']:.3f})"
            return f"{percent(x['pass_rate'])}{avg}"
        table.append([score["name"], cell(sb), cell(sr), _points(sr["delta_pass_rate"]),
                      *(str(sr[k]) if sr[k] is not None else "" for k in
                        ("improvements", "regressions", "unchanged"))])
    lines += columns(table)
    for which in LISTS:
        page = c[which]
        shown = len(page["items"])
        lines += ["", f"{which.replace('_', ' ')}: {page['total']}" + (
            f" (the first {shown})" if 0 < shown < page["total"] else "")]
        lines += [_changed(item, baseline, run_id, which) for item in page["items"]]
    return "\n".join(lines)
