"""What the read-side client commands print, from the query API: `evalstream compare RUN
[BASELINE]` (a run against a baseline run of its dataset, the dataset's pinned one by default),
`evalstream show RUN` (a run's summary and the items to look at), `evalstream datasets` and
`evalstream runs DATASET` (what there is, to find the ids the other commands take; `run` and
`runs` also take a dataset by its name), `evalstream monitor` (the traces posted outside any run
over time) and `evalstream trace TRACE` (one trace, its scores and failures).

compare: the summaries side by side, each score's pass rate and average with the change, how many
items got better or worse, and the items that regressed, improved or changed status (failed or
missing in one run only), with their outputs."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from services.check import CheckReport
from services.client import ApiError, QueryApi
from services.settings import parse_duration

OUTPUT_CHARS = 60  # of an output, in the lists of items
# The lists of items shown, as /v1/compare's `filter` names them: items a score regressed or
# improved on, and items whose trace failed, or is missing, in one run and not the other.
LISTS = ("regressions", "improvements", "status_changed")


def fetch_comparison(api: QueryApi, run_id: str, baseline: str | None, items: int) -> dict:
    """The comparison (runs and scores), and of each of LISTS its count and first `items`."""
    runs = f"{baseline},{run_id}" if baseline else run_id
    base = {"runs": runs, **({"baseline": baseline} if baseline else {})}
    out = api.get("/v1/compare", **base, include="runs,scores")
    for which in LISTS:
        page = api.get("/v1/compare", **base, include="items", filter=which,
                       limit=str(max(items, 1)))["items"]
        out[which] = page | {"items": page["items"][:items]}
    return out


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _points(delta: float | None) -> str:
    return "" if delta is None else f"{100 * delta:+.1f} pts"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return json.dumps(text[:OUTPUT_CHARS] + ("…" if len(text) > OUTPUT_CHARS else ""),
                      ensure_ascii=False)


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _changed(item: dict, baseline: str, run_id: str, which: str) -> tuple[str, str, str, str]:
    """An item of a comparison's list: its id, what changed, and its baseline's and run's
    outputs (or status and error)."""
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
    return item["dataset_item_id"], scores, shown(before), shown(after)


def _comparison_tables(c: dict, run_id: str) -> tuple[dict, dict, list[list[str]],
                                                       list[list[str]]]:
    """The baseline's and the run's summaries, the table of both runs' figures and the table of
    their scores, each with its heading row."""
    baseline = c["baseline"]
    runs = {r["id"]: r for r in c["runs"]}
    b, r = runs[baseline], runs[run_id]

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f} ms"
    figures = [["", "baseline", "run", "change"],
               ["items completed", f"{b['completed_items']} of {b['total_items']}",
                f"{r['completed_items']} of {r['total_items']}", ""],
               ["items failed", str(b["failed_items"]), str(r["failed_items"]), ""],
               ["pass rate", _percent(b["pass_rate"]), _percent(r["pass_rate"]),
                _points(None if None in (b["pass_rate"], r["pass_rate"])
                        else r["pass_rate"] - b["pass_rate"])],
               ["cost", f"{b['total_cost'] or 0:g}", f"{r['total_cost'] or 0:g}", ""],
               ["latency p50", ms(b["latency_p50_ms"]), ms(r["latency_p50_ms"]), ""]]
    scores = [["score", "baseline", "run", "change", "95% CI", "better", "worse", "same"]]
    for score in c["scores"]:
        sb = next(x for x in score["runs"] if x["run_id"] == baseline)
        sr = next(x for x in score["runs"] if x["run_id"] == run_id)

        def cell(x: dict) -> str:
            if not x["count"]:
                return "—"
            avg = "" if x["average"] is None else f" (avg {x['average']:.3f})"
            return f"{_percent(x['pass_rate'])}{avg}"
        scores.append([score["name"], cell(sb), cell(sr), _points(sr["delta_pass_rate"]),
                       _interval(sr.get("paired")),
                       *(str(sr[k]) if sr[k] is not None else "" for k in
                         ("improvements", "regressions", "unchanged"))])
    return b, r, figures, scores


# Under the scores' table: what its interval column means.
INTERVAL_NOTE = ("95% CI: of the change of pass rate, over the items both runs scored; * where "
                 "it excludes 0 (a change more than chance).")


def _interval(paired: dict | None) -> str:
    """A paired change's 95% interval in points, `*` when significant; empty without one."""
    if not paired or paired.get("delta_pass_rate_ci95") is None:
        return ""
    low, high = paired["delta_pass_rate_ci95"]
    return f"{100 * low:+.1f} … {100 * high:+.1f}{' *' if paired['significant'] else ''}"


def _list_heading(title: str, page: dict) -> str:
    """`<title>: <total>`, and how many are listed when not all are."""
    shown = len(page["items"])
    return f"{title}: {page['total']}" + (
        f" (the first {shown})" if 0 < shown < page["total"] else "")


def render_comparison(c: dict, run_id: str) -> str:
    """The comparison as text."""
    b, r, figures, scores = _comparison_tables(c, run_id)
    lines = [f"dataset {r['dataset_name']} ({c['dataset_id']}): run {r['name']} ({run_id}) "
             f"against baseline {b['name']} ({c['baseline']})", ""]
    lines += _columns(figures) + [""] + _columns(scores) + [INTERVAL_NOTE]
    for which in LISTS:
        lines += ["", _list_heading(which.replace('_', ' '), c[which])]
        lines += ["  {}  {}   {} → {}".format(*_changed(item, c["baseline"], run_id, which))
                  for item in c[which]["items"]]
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> list[str]:
    """Rows (the first a heading) as a GitHub Markdown table."""
    def line(cells: list[str]) -> str:
        # A cell is one line: a comment's line breaks would end the table's row.
        return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"
    return [line(rows[0]), "|" + "---|" * len(rows[0]), *(line(r) for r in rows[1:])]


def markdown_comparison(c: dict, run_id: str, heading: str = "###") -> str:
    """The comparison as GitHub Markdown (a pull request's comment, a CI job's summary)."""
    b, r, figures, scores = _comparison_tables(c, run_id)
    lines = [f"{heading} Run {r['name']} against baseline {b['name']}", "",
             f"Dataset {r['dataset_name']} (`{c['dataset_id']}`), run `{run_id}`, baseline "
             f"`{c['baseline']}`.", "", *_md_table(figures), "", *_md_table(scores), "",
             INTERVAL_NOTE]
    for which in LISTS:
        lines += ["", f"**{_list_heading(which.replace('_', ' '), c[which])}**"]
        if c[which]["items"]:
            lines += ["", *_md_table([["item", "change", "baseline", "run"], *(
                list(_changed(item, c["baseline"], run_id, which))
                for item in c[which]["items"])])]
    return "\n".join(lines)


def markdown_check(report: CheckReport, detail: str) -> str:
    """`evalstream check --summary`: the verdict and each check, then `detail` — the run against
    its baseline (markdown_comparison), or the run alone (markdown_run) — as GitHub Markdown (a
    CI job's summary page)."""
    failed = sum(not c.passed for c in report.checks)
    verdict = (f"❌ failed {failed} of {len(report.checks)} check(s)" if failed
               else f"✅ passed ({len(report.checks)} check(s))")
    lines = [f"## evalstream check {verdict}: run {report.run_name}", "",
             f"Run `{report.run_id}`, {report.items} item(s) scored"
             + (f", against baseline `{report.baseline}`." if report.baseline else "."), ""]
    lines += _md_table([["", "check"], *(["✅" if c.passed else "❌", c.describe()]
                                         for c in report.checks)])
    return "\n".join([*lines, "", detail]) + "\n"


def fetch_run(api: QueryApi, run_id: str, items: int, by: str | None = None) -> dict:
    """A run's summary, its first `items` items a score failed on and that failed, and with
    `by` (item.<key> or trace.<key>) its breakdown by that metadata key."""
    out = {"summary": api.get(f"/v1/runs/{run_id}")}
    if by is not None:
        out["breakdown"] = {"by": by, "groups": api.breakdown(run_id, by)}
    for which, params in (("failed_scores", {"filter": "failed"}),
                          ("failed_traces", {"status": "failed"})):
        page = api.get(f"/v1/runs/{run_id}/results", limit=str(max(items, 1)), **params)
        out[which] = {"total": page["total"], "items": page["items"][:items]}
    return out


def _run_parts(r: dict) -> tuple[str, list[list[str]], list[list[str]], list[list[str]] | None,
                                  list[tuple[str, list[tuple[str, str, str]]]]]:
    """`evalstream show`'s parts: the heading, the summary's rows, the scores' table (with its
    heading row), the breakdown's table if asked for, and each list of items to look at (its
    title, and per item its id, the scores that failed and its output or error)."""
    s = r["summary"]

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f} ms"
    heading = (f"run {s['name']} ({s['id']}) of dataset {s['dataset_name']} ({s['dataset_id']}),"
               f" started {s['started_at'][:19].replace('T', ' ')}")
    summary = [
        ["items", f"{s['completed_items']} completed, {s['failed_items']} failed, "
                  f"{s['missing_items']} missing, of {s['total_items']}"],
        ["pass rate", _percent(s["pass_rate"])],
        ["scored items", f"{s['items_with_scores']} ({s['evaluation_failures']} evaluator "
                         "failure(s))"],
        ["cost, tokens", f"{s['total_cost'] or 0:g}, {s['total_tokens'] or 0:,}"],
        ["judge tokens", f"{s.get('evaluation_input_tokens') or 0:,} in, "
                         f"{s.get('evaluation_output_tokens') or 0:,} out"],
        ["latency", f"p50 {ms(s['latency_p50_ms'])}, p95 {ms(s['latency_p95_ms'])}"]]
    scores = [["score", "pass rate", "average", "count"]]
    for name, x in sorted(s["scores"].items()):
        labels = x.get("labels")
        scores.append([name, _percent(x.get("pass_rate")),
                       "—" if x.get("average") is None else f"{x['average']:.3f}",
                       str(x["count"]) + (f" ({', '.join(f'{k} {v}' for k, v in labels.items())})"
                                          if labels else "")])
    breakdown = None
    if "breakdown" in r:
        groups = r["breakdown"]["groups"]
        names = sorted({n for g in groups for n in g["scores"]})
        breakdown = [[r["breakdown"]["by"], "items", "failed", "pass rate", *names]]
        for g in groups:
            value = "(none)" if g["value"] is None else g["value"] if isinstance(
                g["value"], str) else json.dumps(g["value"])
            breakdown.append([value, str(g["items"]), str(g["failed_items"]),
                              _percent(g["pass_rate"]),
                              *(_percent(g["scores"].get(n, {}).get("pass_rate")) for n in names)])
    lists = []
    for which, title in (("failed_scores", "items a score failed on"),
                         ("failed_traces", "items whose trace failed")):
        page = r[which]
        entries = []
        for item in page["items"]:
            failed = [f"{x['name']} {x.get('display_value') or x['value']}"
                      + (f" ({x['comment']})" if x.get("comment") else "")
                      for x in item["scores"] if x.get("passed") is False]
            what = (f"output {_short(item['output'])}, expected {_short(item['expected_output'])}"
                    if item["status"] == "succeeded" else f"error {_short(item['error'])}")
            entries.append((item["dataset_item_id"] or item["trace_id"], "; ".join(failed), what))
        lists.append((_list_heading(title, page), entries))
    return heading, summary, scores, breakdown, lists


def render_run(r: dict) -> str:
    """`evalstream show`: the run's summary, then the items to look at."""
    heading, summary, scores, breakdown, lists = _run_parts(r)
    lines = [heading, "", *_columns(summary), "", *_columns(scores)]
    if breakdown is not None:
        lines += ["", *_columns(breakdown)]
    for title, entries in lists:
        lines += ["", title]
        lines += [f"  {item}  {failed + '   ' if failed else ''}{what}"
                  for item, failed, what in entries]
    return "\n".join(lines)


def markdown_run(r: dict, heading: str = "###") -> str:
    """`evalstream show --markdown`: the same as GitHub Markdown."""
    title, summary, scores, breakdown, lists = _run_parts(r)
    lines = [f"{heading} {title[0].upper()}{title[1:]}", "", *_md_table([["", ""], *summary]),
             "", *_md_table(scores)]
    if breakdown is not None:
        lines += ["", *_md_table(breakdown)]
    for list_title, entries in lists:
        lines += ["", f"**{list_title}**"]
        if entries:
            lines += ["", *_md_table([["item", "failed", "output"],
                                      *(list(entry) for entry in entries)])]
    return "\n".join(lines)


def _when(ts: str | None) -> str:
    return "—" if not ts else ts[:16].replace("T", " ")


def _instant(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


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


def runs(api: QueryApi, dataset: str, limit: int,
         where: list[str] | None = None) -> tuple[list[dict], int]:
    """The dataset's newest runs, those whose metadata has every KEY=VALUE of `where`."""
    page = api.get(f"/v1/datasets/{dataset_id(api, dataset)}/runs", limit=str(limit),
                   metadata=where or [])
    return page["runs"], page["total"]


def render_datasets(rows: list[dict], total: int) -> str:
    table = [["id", "name", "items", "runs", "baseline run", "last run"]]
    table += [[d["id"], d["name"], str(d["item_count"]), str(d["run_count"]),
               d["baseline_run_id"] or "—", _when(d["last_run_at"])] for d in rows]
    return "\n".join(_columns(table) + _more(len(rows), total, "datasets"))


def render_runs(rows: list[dict], total: int) -> str:
    """Runs with their items, failures, overall pass rate and each score's pass rate (or, for a
    score without one — categorical labels —, its count)."""
    names = sorted({n for r in rows for n in r["scores"]})
    table = [["id", "name", "started", "items", "failed", "pass rate", *names]]
    for r in rows:
        cells = []
        for n in names:
            s = r["scores"].get(n)
            cells.append("—" if not s else _percent(s.get("pass_rate")) if s.get("pass_rate")
                         is not None else f"{s.get('count', 0)} scored")
        table.append([r["id"], r["name"], _when(r["started_at"]),
                      f"{r['completed_items'] + r['failed_items']}/{r['total_items']}",
                      str(r["failed_items"]), _percent(r["pass_rate"]), *cells])
    return "\n".join(_columns(table) + _more(len(rows), total, "runs"))


def render_evaluators(rows: list[dict]) -> str:
    """Evaluator types with their version, source, where they come from and their options
    (`*`: required)."""
    table = [["type", "version", "source", "from", "options"]]
    for e in rows:
        schema = e["options"]
        required = set(schema.get("required", []))
        options = [f"{name}*" if name in required else name
                   for name in schema.get("properties", {}) if name != "pass_threshold"]
        origin = (f"{e['plugin']} (async)" if e["async"] else e["plugin"]) if e["plugin"] \
            else "built in"
        table.append([e["type"], e["version"], e["source"], origin, ", ".join(options) or "—"])
    return "\n".join([*_columns(table), "(* required; every spec also takes name and "
                                        "pass_threshold)"])


def _rule_where(where: dict) -> str:
    """`key="a" | "b", other=1`: a rule's `where` as it reads."""
    parts = [f"{k}=" + " | ".join(json.dumps(v) for v in (vs if isinstance(vs, list) else [vs]))
             for k, vs in where.items()]
    return ", ".join(parts) or "every trace outside runs"


def render_rules(rules: list[dict]) -> str:
    """Scoring rules: name, enabled, sample rate, what they select, the scores they give."""
    if not rules:
        return "no scoring rules: traces outside runs are not scored (evalstream rules set)"
    table = [["rule", "enabled", "sample", "where", "scores"]]
    for r in rules:
        names = ", ".join(f"{s.get('name') or s['type']} ({s['type']})" for s in r["evaluators"])
        table.append([r["name"], "yes" if r["enabled"] else "no", f"{r['sample_rate']:.4g}",
                      _rule_where(r["where"]), names])
    return "\n".join(_columns(table))


def render_trial(cases: list[dict], results: list[dict]) -> str:
    """Each case tried, with its output (and expected output), then each score — value or label,
    passed or failed, comment — and each evaluator that failed with its reason."""
    lines: list[str] = []
    for n, (case, result) in enumerate(zip(cases, results, strict=True), 1):
        said = f"case {n}: output {_short(case.get('output'))}"
        if case.get("expected_output") is not None:
            said += f", expected {_short(case['expected_output'])}"
        lines.append(said)
        table = [["  " + s["name"], s["label"] if s["label"] is not None else f"{s['value']:g}",
                  {True: "passed", False: "failed", None: "—"}[s["passed"]],
                  s["comment"] or ""] for s in result["scores"]]
        lines += _columns(table) if table else []
        lines += [f"  {f['name']}  evaluator failed: {f['reason']}" for f in result["failures"]]
        if not (result["scores"] or result["failures"]):
            lines.append("  no score (nothing to compare with)")
    return "\n".join(lines)


def _more(shown: int, total: int, what: str) -> list[str]:
    return [f"({shown} of {total} {what}, newest first; --limit for more)"] \
        if shown < total else []


# `evalstream monitor` and `evalstream trace`: the traces posted outside any run (production
# traffic), from GET /v1/monitoring and GET /v1/traces/{id}.

def parse_time(text: str, relative_to: datetime) -> datetime:
    """An ISO 8601 time (without a zone: UTC), or a duration before `relative_to`: `90s`,
    `30m`, `24h`, `7d`, `2w`; ValueError saying what it takes."""
    with contextlib.suppress(ValueError):
        return relative_to - parse_duration(text)
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2026-03-01T12:00:00Z) nor a "
                         "duration before it (90s, 30m, 24h, 7d, 2w)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def fetch_monitoring(api: QueryApi, since: datetime, until: datetime, interval: str,
                     score: str | None = None, by: str | None = None,
                     group: str | None = None) -> dict:
    params = {"since": since.isoformat(), "until": until.isoformat(), "interval": interval}
    params |= {k: v for k, v in (("score", score), ("by", by), ("group", group))
               if v is not None}
    return api.get("/v1/monitoring", **params)


def _score_cell(figures: dict | None) -> str:
    """A score in a bucket: its pass rate, else its average, else its labels' counts."""
    if not figures:
        return "—"
    if figures.get("pass_rate") is not None:
        return _percent(figures["pass_rate"])
    if figures.get("average") is not None:
        return f"avg {figures['average']:.3f}"
    labels = figures.get("labels") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(labels.items())) or str(figures["count"])


def _monitoring_parts(m: dict) -> tuple[str, list[list[str]]]:
    """`evalstream monitor`'s heading and table: a row per bucket (its start, traces, failed,
    scored, evaluator failures, pass rate, each score's pass rate — or average, or labels),
    then the totals."""
    since, until = _when(m["since"]), _when(m["until"])
    heading = (f"traces outside runs, {since} to {until} UTC, per {m['interval']}"
               + (f", score {m['score']}" if m.get("score") else ""))
    kept = m.get("retained_since")
    if kept is not None and _instant(kept) > _instant(m["since"]):
        heading += f" (those before {_when(kept)} UTC removed by retention)"
    names = sorted({n for b in [*m["buckets"], m["totals"]] for n in b["scores"]})
    table = [[m["interval"], "traces", "failed", "scored", "eval. failures", "pass rate",
              *names]]

    def row(label: str, b: dict) -> list[str]:
        return [label, str(b["traces"]), str(b["failed"]), str(b["scored_traces"]),
                str(b["evaluation_failures"]), _percent(b["pass_rate"]),
                *(_score_cell(b["scores"].get(n)) for n in names)]
    table += [row(_when(b["start"]), b) for b in m["buckets"]]
    table.append(row("total", m["totals"]))
    return heading, table


def render_monitoring(m: dict) -> str:
    heading, table = _monitoring_parts(m)
    lines = [heading, "", *_columns(table)]
    if not m["buckets"]:
        lines.append("(no trace outside runs in this window)")
    return "\n".join(lines)


def markdown_monitoring(m: dict, heading: str = "###") -> str:
    title, table = _monitoring_parts(m)
    return "\n".join([f"{heading} {title[0].upper()}{title[1:]}", "", *_md_table(table)])


TRACE_CHARS = 2000  # of an input, output or expected output, in `evalstream trace`


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:TRACE_CHARS] + ("…" if len(text) > TRACE_CHARS else "")


def render_trace(t: dict) -> str:
    """`evalstream trace`: where the trace belongs, its status and figures, its input, output
    and expected output, its scores (value or label, passed, threshold, comment), the
    evaluators that failed on it, and its link."""
    where = (f"run {t['run_id']} (dataset {t['dataset_id']}, item {t['dataset_item_id']})"
             if t.get("run_id") else "outside any run")
    usage = ("—" if t["input_tokens"] is None
             else f"{t['input_tokens']:,} in, {t['output_tokens']:,} out")
    facts = [["status", t["status"] + (f": {t['error']}" if t.get("error") else "")],
             ["completed", f"{_when(t['completed_at'])} UTC"],
             ["latency", "—" if t["latency_ms"] is None else f"{t['latency_ms']:,.0f} ms"],
             ["tokens", usage], ["cost", "—" if t["cost"] is None else f"{t['cost']:g}"]]
    if t.get("metadata"):
        facts.append(["metadata", json.dumps(t["metadata"], ensure_ascii=False)])
    if t.get("item_metadata"):
        facts.append(["item metadata", json.dumps(t["item_metadata"], ensure_ascii=False)])
    lines = [f"trace {t['trace_id']}, {where}", "", *_columns(facts), ""]
    for label, key in (("input", "input"), ("output", "output"),
                       ("expected", "expected_output")):
        if t.get(key) is not None:
            lines.append(f"{label}: {_text(t[key])}")
    lines.append("")
    if t["scores"]:
        table = [["score", "value", "", "threshold", "source", "comment"]]
        for s in t["scores"]:
            value = s["string_value"] if s["data_type"] == "categorical" and \
                s.get("string_value") else f"{s['value']:g}"
            table.append([s["name"], value, {True: "passed", False: "failed", None: "—"}[
                s["passed"]], "" if s.get("pass_threshold") is None else f"{s['pass_threshold']:g}",
                s["source"], " ".join((s.get("comment") or "").split())])
        lines += _columns(table)
    else:
        lines.append("no score")
    lines += [f"evaluator failed: {f['name']} ({f['evaluator']}): {f['reason']}"
              for f in t["evaluation_failures"]]
    if t.get("trace_url"):
        lines += ["", t["trace_url"]]
    return "\n".join(lines)
