"""Traces posted outside any run (production traffic), spread over six hours, with known scores,
labels, thresholds and evaluator failures; a run's traces completed in the same hours beside them;
and the figures the read side must give for them, computed here on their own (no SQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.catalog import DatasetCreated, DatasetItem, DatasetItemsUpserted, RunStarted
from schemas.common import EvaluatorSpec, run_item_key, score_id
from schemas.envelope import Envelope, wrap
from schemas.scores import CaseFailure, CaseScore, CaseScored
from schemas.traces import TraceCompleted

START = datetime(2026, 3, 1, tzinfo=UTC)  # the first hour of the traffic
HOURS = 6
COUNT = 30
PASS = 0.5


def trace(prefix: str, n: int) -> dict:
    """The n-th production trace: its id, time, status, metadata, scores (name, data type, value,
    label, pass threshold) and the names of the evaluators that failed on it."""
    status = "failed" if n % 7 == 3 else "succeeded"
    scores: list[tuple[str, str, float, str | None, float | None]] = []
    failures: list[str] = []
    if status == "succeeded":
        if n % 5:  # every fifth has no exact_match (no expected output, say)
            scores.append(("exact_match", "boolean", 0.0 if n % 4 == 0 else 1.0, None, None))
        if n % 10:
            scores.append(("similarity", "numeric", (n % 10) / 10, None,
                           0.8 if n % 2 else None))
        if n % 3 == 0:
            scores.append(("tone", "categorical", 0.0, "calm" if n % 2 else "loud", None))
        if n % 6 == 1:
            failures.append("judge")
    return {"trace_id": f"{prefix}-p{n}", "n": n, "status": status,
            # spread over the hours, not in id order
            "completed_at": START + timedelta(hours=(n * 5) % HOURS, minutes=(n * 7) % 60,
                                              seconds=n),
            "metadata": {"model": "a" if n % 3 else "b",
                         "tags": ["x"] if n % 2 else ["x", "y"], "n": n},
            "scores": scores, "failures": failures}


def traces(prefix: str) -> list[dict]:
    return [trace(prefix, n) for n in range(COUNT)]


def _case(t: dict, run_id: str | None = None, dataset_item_id: str | None = None,
          ) -> list[Envelope]:
    """The trace's TraceCompleted and, if it succeeded, the evaluator's CaseScored for it."""
    run_item_id = run_item_key(run_id, dataset_item_id, t["trace_id"])
    completed = wrap(TraceCompleted(
        trace_id=t["trace_id"], run_id=run_id, dataset_item_id=dataset_item_id,
        input={"q": t["n"]}, output=f"answer {t['n']}", status=t["status"],
        error="boom" if t["status"] == "failed" else None, latency_ms=100.0 + t["n"],
        metadata=t["metadata"], completed_at=t["completed_at"]), source="test", key=run_item_id)
    if t["status"] != "succeeded":
        return [completed]
    scored = wrap(CaseScored(
        run_item_id=run_item_id, run_id=run_id, dataset_item_id=dataset_item_id,
        trace_id=t["trace_id"], observed_at=t["completed_at"],
        scores=tuple(CaseScore(score_id=score_id(run_item_id, name, "programmatic"), name=name,
                               value=value, data_type=data_type, string_value=label,
                               source="programmatic", evaluator=name, evaluator_version="1",
                               spec_hash="h", pass_threshold=threshold)
                     for name, data_type, value, label, threshold in t["scores"]),
        failures=tuple(CaseFailure(failure_id=f"{run_item_id}-{name}", name=name,
                                   evaluator="llm_judge", reason="model unreachable")
                       for name in t["failures"])), source="evaluator", key=run_item_id)
    return [completed, scored]


def run_traces(prefix: str) -> list[dict]:
    """A run's traces, completed in the same hours as the production ones, all scored and all
    failing exact_match: a read of production traffic that let them in would show it."""
    return [{"trace_id": f"{prefix}-r{n}", "n": 100 + n, "status": "succeeded",
             "completed_at": START + timedelta(hours=n % HOURS, minutes=30),
             "metadata": {"model": "a", "tags": ["x", "y"]},
             "scores": [("exact_match", "boolean", 0.0, None, None),
                        ("similarity", "numeric", 0.1, None, None)],
             "failures": ["judge"]} for n in range(8)]


def production_log(prefix: str) -> list[Envelope]:
    """The production traces' events alone (no run, no dataset)."""
    return [env for t in traces(prefix) for env in _case(t)]


def log(prefix: str) -> tuple[list[Envelope], dict]:
    """The events, and the ids: dataset, run, the run's item ids, and `shared`: a trace id both
    posted in the run (earlier) and outside (later), and `run_latest`: one posted outside
    (earlier) and in the run (later)."""
    dataset_id, run_id = f"{prefix}-ds", f"{prefix}-run"
    spec = (EvaluatorSpec.model_validate({"type": "exact_match"}),)
    in_run = run_traces(prefix)
    items = [DatasetItem(id=f"i{n}", input={"q": t["n"]}, expected_output="x",
                         metadata={"category": "c"}) for n, t in enumerate(in_run)]
    events = [wrap(DatasetCreated(dataset_id=dataset_id, name="prod", evaluators=spec,
                                  created_at=START - timedelta(days=1)),
                   source="test", key=dataset_id),
              wrap(DatasetItemsUpserted(dataset_id=dataset_id, items=tuple(items),
                                        upserted_at=START - timedelta(days=1)),
                   source="test", key=dataset_id),
              wrap(RunStarted(run_id=run_id, dataset_id=dataset_id, name="run", evaluators=spec,
                              total_items=len(items), started_at=START - timedelta(hours=1)),
                   source="test", key=dataset_id)]
    events += production_log(prefix)
    for item, t in zip(items, in_run, strict=True):
        events += _case(t, run_id, item.id)
    # One trace id in the run and outside it: outside is the later; another the other way.
    shared = f"{prefix}-shared"
    events += _case({**in_run[0], "trace_id": shared}, run_id)[:1]
    events += _case({**trace(prefix, 1), "trace_id": shared,
                     "completed_at": START + timedelta(hours=HOURS + 1)})
    run_latest = f"{prefix}-run-latest"
    events += _case({**trace(prefix, 2), "trace_id": run_latest,
                     "completed_at": START - timedelta(hours=3)})
    events += _case({**in_run[1], "trace_id": run_latest,
                     "completed_at": START + timedelta(hours=HOURS + 2)}, run_id)[:1]
    return events, {"dataset_id": dataset_id, "run_id": run_id, "shared": shared,
                    "run_latest": run_latest}


def figures(subset: list[dict], score: str | None = None) -> dict:
    """What a bucket (or the totals) of GET /v1/monitoring holds for these traces."""
    def named(t: dict) -> list[tuple]:
        return [s for s in t["scores"] if score is None or s[0] == score]

    graded = [(v, th) for t in subset for _, dt, v, _, th in named(t) if dt != "categorical"]
    per_name: dict[str, dict] = {}
    for t in subset:
        for name, dt, value, label, threshold in named(t):
            per_name.setdefault(name, []).append((dt, value, label, threshold))
    scores = {}
    for name, rows in per_name.items():
        numbers = [(v, th) for dt, v, _, th in rows if dt != "categorical"]
        labels: dict[str, int] = {}
        for dt, _, label, _ in rows:
            if dt == "categorical":
                labels[label] = labels.get(label, 0) + 1
        scores[name] = {
            "average": sum(v for v, _ in numbers) / len(numbers) if numbers else None,
            "pass_rate": passing(numbers) if numbers else None, "count": len(rows),
            **({"labels": labels} if labels else {})}
    return {"traces": len(subset),
            "succeeded": sum(t["status"] == "succeeded" for t in subset),
            "failed": sum(t["status"] == "failed" for t in subset),
            "scored_traces": sum(bool(named(t)) for t in subset),
            "evaluation_failures": sum(len([f for f in t["failures"]
                                            if score is None or f == score]) for t in subset),
            "pass_rate": passing(graded) if graded else None,
            "scores": scores}


def passing(values: list[tuple[float, float | None]]) -> float:
    return sum(v >= (PASS if th is None else th) for v, th in values) / len(values)


def outcome(t: dict, which: str, score: str | None = None) -> bool:
    """Is the trace kept by /results' filter `which` (of score name `score`)?"""
    scores = [s for s in t["scores"] if score is None or s[0] == score]
    graded = [s for s in scores if s[1] != "categorical"]
    failing = any(v < (PASS if th is None else th) for _, _, v, _, th in graded)
    return {"unscored": not scores, "failed": failing,
            "passed": bool(graded) and not failing,
            "evaluator_failed": any(score is None or f == score for f in t["failures"])}[which]
