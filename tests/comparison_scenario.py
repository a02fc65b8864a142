"""Three runs of one dataset, with improvements, regressions, a failed and a missing item, and
every figure their comparison must show, computed here from the scenario alone (never from the
read models) for the end-to-end and integration tests of the comparison and dashboard views."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from datetime import timedelta

import pytest

from schemas.catalog import DatasetCreated, DatasetItem, DatasetItemsUpserted, RunStarted
from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import Envelope, wrap
from schemas.traces import TraceCompleted, Usage
from services.evaluator.scoring import score_batch

KEYWORDS = ["capital", "city"]
EVALUATORS = [{"type": "exact_match"},
              {"type": "contains", "name": "explains", "keywords": KEYWORDS}]
SCORE_NAMES = ("exact_match", "explains")
PASS = 0.5

QUESTIONS = [("Capital of France?", "Paris"), ("Capital of Germany?", "Berlin"),
             ("Capital of Italy?", "Rome"), ("Capital of Spain?", "Madrid"),
             ("Capital of Portugal?", "Lisbon"), ("Capital of Austria?", "Vienna")]
FAILED = "<failed>"  # the agent crashed: a failed trace
MISSING = None       # the run has no trace for the item at all
OUTPUTS = {
    "A": ["Paris", "Berlin is the capital", "Rome", "Madrid, capital city", "Lisbon", "Vienna"],
    "B": ["Paris", "Berlin", FAILED, "Madrid", MISSING, "Vienna, the capital city"],
    "C": ["Paris is the capital city", "Berlin is the capital", "Roma", "Madrid, capital city",
          "Lisbon city", "Vienna"],
}
RUN_KEYS = tuple(OUTPUTS)
# The items' metadata, to break the figures down by: a region each, tags (Portugal's are empty,
# Austria has none), and a nested flag.
REGIONS = ["west", "central", "south", "south", "west", "central"]
TAGS: list[list[str] | None] = [["g7", "large"], ["g7", "large"], ["g7", "large"], ["large"],
                                [], None]
COASTAL = [True, True, True, True, True, False]


def metadata(n: int) -> dict:
    tags = {} if TAGS[n] is None else {"tags": TAGS[n]}
    return {"region": REGIONS[n], "geo": {"coastal": COASTAL[n]}, **tags}


def items(prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-i{n}", "input": {"q": q}, "expected_output": answer,
             "metadata": metadata(n)} for n, (q, answer) in enumerate(QUESTIONS)]


def trace(run: str, n: int) -> dict | None:
    """What run `run` posts for item n (without ids), or None when it posts nothing."""
    out = OUTPUTS[run][n]
    if out is MISSING:
        return None
    k = RUN_KEYS.index(run)
    failed = out == FAILED
    return {"status": "failed" if failed else "succeeded", "output": None if failed else out,
            "error": "timeout" if failed else None,
            "latency_ms": 100.0 + 37 * n + 11 * k + n * n,
            "usage": {"input_tokens": 10 + n, "output_tokens": 3 + k},
            "cost": round(0.001 * (n + 1) + 0.0005 * k, 6),
            "metadata": {"attempt": 1 + n % 2}}


def scores(run: str, n: int) -> dict[str, float]:
    """The scores the evaluators must give run `run` on item n, by the evaluators' rules."""
    out = OUTPUTS[run][n]
    if out in (MISSING, FAILED):
        return {}
    return {"exact_match": 1.0 if out.strip() == QUESTIONS[n][1] else 0.0,
            "explains": sum(k in out.casefold() for k in KEYWORDS) / len(KEYWORDS)}


def status(run: str, n: int) -> str:
    t = trace(run, n)
    return "missing" if t is None else t["status"]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (what percentile_cont does)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run_figures(run: str) -> dict:
    n_items = len(QUESTIONS)
    posted = [t for t in (trace(run, n) for n in range(n_items)) if t is not None]
    by_name: dict[str, list[float]] = defaultdict(list)
    for n in range(n_items):
        for name, value in scores(run, n).items():
            by_name[name].append(value)
    every = [v for values in by_name.values() for v in values]
    latencies = [t["latency_ms"] for t in posted]
    return {
        "total_items": n_items,
        "completed_items": sum(t["status"] == "succeeded" for t in posted),
        "failed_items": sum(t["status"] == "failed" for t in posted),
        "missing_items": n_items - len(posted),
        "total_cost": sum(t["cost"] for t in posted),
        "total_tokens": sum(t["usage"]["input_tokens"] + t["usage"]["output_tokens"]
                            for t in posted),
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p95_ms": percentile(latencies, 0.95),
        "items_with_scores": sum(bool(scores(run, n)) for n in range(n_items)),
        "pass_rate": mean([v >= PASS for v in every]),
        "scores": {name: {"average": mean(values), "pass_rate": mean([v >= PASS for v in values]),
                          "count": len(values)} for name, values in by_name.items()},
    }


def score_figures(runs: list[str], baseline: str) -> dict[str, dict[str, dict]]:
    """score name → run → average, pass rate, count, deltas and change counts vs `baseline`."""
    figures = {run: run_figures(run)["scores"] for run in runs}
    out: dict[str, dict[str, dict]] = {}
    for name in sorted({name for f in figures.values() for name in f}):
        base = figures[baseline].get(name)
        out[name] = {}
        for run in runs:
            own = figures[run].get(name)
            entry = {"average": own and own["average"], "pass_rate": own and own["pass_rate"],
                     "count": own["count"] if own else 0}
            if run == baseline:
                entry.update(delta_average=None, delta_pass_rate=None, improvements=None,
                             regressions=None, unchanged=None, paired=None)
            else:
                pairs = [(scores(run, n)[name], scores(baseline, n)[name])
                         for n in range(len(QUESTIONS))
                         if name in scores(run, n) and name in scores(baseline, n)]
                entry.update(
                    delta_average=(own["average"] - base["average"]) if own and base else None,
                    delta_pass_rate=(own["pass_rate"] - base["pass_rate"])
                    if own and base else None,
                    improvements=sum(v > b for v, b in pairs),
                    regressions=sum(v < b for v, b in pairs),
                    unchanged=sum(v == b for v, b in pairs),
                    paired=paired_figures(pairs))
            out[name][run] = entry
    return out


# Student's t, two-sided 95%, for the degrees of freedom this scenario has (up to 5 pairs).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def t_cdf(t: float, df: int) -> float:
    """Student's t's distribution function, in closed form for 1 to 5 degrees of freedom."""
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    if df == 3:
        return 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    if df == 4:
        u = t * t / 4
        return 0.5 + 0.375 * t / math.sqrt(1 + u) * (1 - t * t / (12 * (1 + u)))
    if df == 5:
        theta = math.atan(t / math.sqrt(5))
        c = math.cos(theta)
        return 0.5 + (theta + math.sin(theta) * c * (1 + 2 / 3 * c * c)) / math.pi
    raise ValueError(df)


def p_fell(diffs: list[float]) -> float | None:
    """One-sided p-value that the mean of the differences is this low with no change at all."""
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if statistics.mean(diffs) < 0 else 1.0
    return t_cdf(statistics.mean(diffs) / (sd / math.sqrt(len(diffs))), len(diffs) - 1)


def paired_figures(pairs: list[tuple[float, float]]) -> dict:
    """Over (run value, baseline value) pairs of one score name: the mean change of the value
    and of passing, each with its 95% interval (the pass rate's within ±1), and whether the
    latter excludes 0."""
    def interval(diffs: list[float]) -> list[float] | None:
        if len(diffs) < 2:
            return None
        half = T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
        return [statistics.mean(diffs) - half, statistics.mean(diffs) + half]

    values = [v - b for v, b in pairs]
    passes = [float((v >= PASS) - (b >= PASS)) for v, b in pairs]
    pass_ci = interval(passes)
    if pass_ci is not None:
        pass_ci = [max(pass_ci[0], -1.0), min(pass_ci[1], 1.0)]
    return {"items": len(pairs),
            "delta_average": statistics.mean(values) if pairs else None,
            "delta_average_ci95": interval(values),
            "delta_pass_rate": statistics.mean(passes) if pairs else None,
            "delta_pass_rate_ci95": pass_ci,
            "significant": None if pass_ci is None else (pass_ci[0] > 0 or pass_ci[1] < 0),
            "p_pass_rate_fell": p_fell(passes)}


def item_figures(runs: list[str], baseline: str) -> list[dict]:
    """Per item (in order): each run's status, output, scores, and improved/regressed names."""
    out = []
    for n in range(len(QUESTIONS)):
        base = scores(baseline, n)
        per_run = {}
        for run in runs:
            own = scores(run, n)
            t = trace(run, n)
            compared = run != baseline
            per_run[run] = {
                "status": status(run, n), "output": t["output"] if t else None, "scores": own,
                "improved": sorted(k for k, v in own.items()
                                   if compared and k in base and v > base[k]),
                "regressed": sorted(k for k, v in own.items()
                                    if compared and k in base and v < base[k])}
        out.append({"n": n, "runs": per_run,
                    "status_changed": any(r["status"] != status(baseline, n)
                                          for r in per_run.values()),
                    "improved": any(r["improved"] for r in per_run.values()),
                    "regressed": any(r["regressed"] for r in per_run.values())})
    return out


def filtered(runs: list[str], baseline: str, kind: str, score: str | None = None) -> list[int]:
    """Indices of the items a filter keeps."""
    keep = []
    for item in item_figures(runs, baseline):
        if kind == "status_changed":
            hit = item["status_changed"]
        else:
            field = "regressed" if kind == "regressions" else "improved"
            hit = any(score is None or score in r[field] for r in item["runs"].values()
                      if r[field])
        if hit:
            keep.append(item["n"])
    return keep


async def view_figures(conn, schema: str, run_ids: dict[str, str], baseline: str) -> dict:
    """The same figures read from the dashboard views with plain SQL, as a dashboard would:
    per run, per run and score name (with deltas and change counts), and per item status."""
    ids = list(run_ids.values())
    key = {v: k for k, v in run_ids.items()}
    runs = {key[r["run_id"]]: {**dict(r), "scores": {}} for r in await conn.fetch(
        f'SELECT * FROM "{schema}".run_summary WHERE run_id = ANY($1::text[])', ids)}
    for r in await conn.fetch(
            f'SELECT * FROM "{schema}".score_summary WHERE run_id = ANY($1::text[])', ids):
        runs[key[r["run_id"]]]["scores"][r["score_name"]] = {
            "average": r["average"], "pass_rate": r["pass_rate"], "count": r["count"]}
    scores = {}
    for r in await conn.fetch(f"""
            SELECT r.run_id, r.score_name, r.average - b.average AS delta_average,
                   r.pass_rate - b.pass_rate AS delta_pass_rate,
                   c.improvements, c.regressions, c.unchanged
            FROM "{schema}".score_summary r
            JOIN "{schema}".score_summary b ON b.score_name = r.score_name AND b.run_id = $1
            LEFT JOIN (
                SELECT run_id, score_name,
                       count(*) FILTER (WHERE change = 'improved') AS improvements,
                       count(*) FILTER (WHERE change = 'regressed') AS regressions,
                       count(*) FILTER (WHERE change = 'unchanged') AS unchanged
                FROM "{schema}".item_comparison WHERE baseline_run_id = $1
                GROUP BY run_id, score_name
            ) c ON c.run_id = r.run_id AND c.score_name = r.score_name
            WHERE r.run_id = ANY($2::text[]) AND r.run_id <> $1""", run_ids[baseline], ids):
        scores[(key[r["run_id"]], r["score_name"])] = {
            k: r[k] for k in ("delta_average", "delta_pass_rate", "improvements", "regressions",
                              "unchanged")}
    statuses = {(key[r["run_id"]], r["dataset_item_id"]): r["status"] for r in await conn.fetch(
        f'SELECT run_id, dataset_item_id, status FROM "{schema}".item_results'
        " WHERE run_id = ANY($1::text[])", ids)}
    return {"runs": runs, "scores": scores, "statuses": statuses}


def expected_view_figures(runs: list[str], baseline: str, item_ids: list[str]) -> dict:
    scored = score_figures(runs, baseline)
    return {
        "runs": {run: run_figures(run) for run in runs},
        "scores": {(run, name): {k: per_run[run][k] for k in (
                       "delta_average", "delta_pass_rate", "improvements", "regressions",
                       "unchanged")}
                   for name, per_run in scored.items() for run in runs if run != baseline},
        "statuses": {(run, item_ids[n]): status(run, n) for run in runs
                     for n in range(len(QUESTIONS))},
    }


def close(expected):
    """`expected` with every float compared approximately, for `actual == close(expected)`."""
    if isinstance(expected, float):
        return pytest.approx(expected, rel=1e-9, abs=1e-12)
    if isinstance(expected, dict):
        return {k: close(v) for k, v in expected.items()}
    if isinstance(expected, list | tuple):
        return [close(v) for v in expected]
    return expected


def subset(actual: dict, like: dict) -> dict:
    """The entries of `actual` that `like` has (recursively for dicts)."""
    return {k: subset(actual[k], v) if isinstance(v, dict) and isinstance(actual.get(k), dict)
            else actual.get(k) for k, v in like.items()}


def groups_of(by: str, n: int) -> list:
    """The groups item n falls into when broken down `by` (item.region, item.tags,
    item.geo.coastal or trace.attempt): its value, each element of an array, None for none."""
    source, _, key = by.partition(".")
    value: object = metadata(n) if source == "item" else {"attempt": 1 + n % 2}
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        return sorted(set(value)) or [None]
    return [value]


def breakdown_figures(run: str, by: str) -> dict:
    """group value → run `run`'s figures for its traced items in the group."""
    members: dict = defaultdict(list)
    for n in range(len(QUESTIONS)):
        if trace(run, n) is not None:
            for value in groups_of(by, n):
                members[value].append(n)
    out = {}
    for value, ns in members.items():
        by_name: dict[str, list[float]] = defaultdict(list)
        for n in ns:
            for name, v in scores(run, n).items():
                by_name[name].append(v)
        every = [v for values in by_name.values() for v in values]
        traces = [trace(run, n) for n in ns]
        latencies = [t["latency_ms"] for t in traces]
        out[value] = {
            "items": len(ns),
            "completed_items": sum(status(run, n) == "succeeded" for n in ns),
            "failed_items": sum(status(run, n) == "failed" for n in ns),
            "total_cost": sum(t["cost"] for t in traces),
            "total_tokens": sum(t["usage"]["input_tokens"] + t["usage"]["output_tokens"]
                                for t in traces),
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            "items_with_scores": sum(bool(scores(run, n)) for n in ns),
            "pass_rate": mean([v >= PASS for v in every]) if every else None,
            "evaluation_failures": 0,
            "scores": {name: {"average": mean(values),
                              "pass_rate": mean([v >= PASS for v in values]),
                              "count": len(values)} for name, values in by_name.items()}}
    return out


def log(prefix: str, runs: str = "ABC") -> tuple[list[Envelope], dict[str, str], list[str]]:
    """The scenario as the events the pipeline would log, the evaluator's scores included: the
    log, run key → run id, and the item ids."""
    now = utcnow()
    specs = tuple(EvaluatorSpec.model_validate(s) for s in EVALUATORS)
    dataset_id = f"{prefix}-dataset"
    dataset_items = items(prefix)
    run_ids = {key: f"{prefix}-run-{key}" for key in runs}
    events = [wrap(DatasetCreated(dataset_id=dataset_id, name="capitals", evaluators=specs,
                                  created_at=now), source="test", key=dataset_id),
              wrap(DatasetItemsUpserted(dataset_id=dataset_id, upserted_at=now, items=tuple(
                  DatasetItem.model_validate(i) for i in dataset_items)),
                   source="test", key=dataset_id)]
    traces = []
    for k, key in enumerate(runs):
        events.append(wrap(RunStarted(run_id=run_ids[key], dataset_id=dataset_id,
                                      name=f"run {key}", evaluators=specs,
                                      total_items=len(dataset_items),
                                      started_at=now + timedelta(seconds=k)),
                           source="test", key=dataset_id))
        for n, item in enumerate(dataset_items):
            if (t := trace(key, n)) is None:
                continue
            traces.append(wrap(TraceCompleted(
                trace_id=f"{prefix}-{key}-{n}", run_id=run_ids[key], dataset_id=dataset_id,
                dataset_item_id=item["id"], input=item["input"], output=t["output"],
                expected_output=item["expected_output"], evaluators=specs, status=t["status"],
                error=t["error"], latency_ms=t["latency_ms"], usage=Usage(**t["usage"]),
                cost=t["cost"], metadata=t["metadata"], completed_at=now),
                source="test", key=run_ids[key]))
    return events + traces + score_batch(traces), run_ids, [i["id"] for i in dataset_items]
