"""The projections' shortcuts against a real Postgres: record bodies handed to Postgres as consumed
give the rows the validated events give, even where pydantic reads the JSON more leniently; and
scores, kept out of applied_events, are still applied once per event id."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.common import EvaluatorSpec, score_id
from schemas.envelope import Envelope, unwrap, wrap
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import TraceCompleted
from tests.scratch_read_model import project

pytestmark = pytest.mark.postgres

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
TABLES = {"run_items": "run_item_id", "scores": "score_id", "score_history": "event_id",
          "evaluation_failures": "failure_id"}


async def _project(dsn: str, batches: list[list[Envelope]]) -> dict[str, list[dict]]:
    async def tables(conn) -> dict[str, list]:
        out = {t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY {k}")]
               for t, k in TABLES.items()}
        out["applied_events"] = [r[0] for r in await conn.fetch(
            "SELECT event_id FROM applied_events ORDER BY 1")]
        return out

    return await project(dsn, batches, tables)


def _record(env: Envelope, **lenient) -> Envelope:
    """The envelope as a consumer decodes it from a record whose body some other Kafka client
    wrote: the same event, with `lenient` fields spelled as pydantic accepts and Postgres not."""
    body = {**json.loads(env.body()), **lenient}
    return unwrap(env.headers(), json.dumps(body).encode())


def _trace(n: int, **kw) -> TraceCompleted:
    return TraceCompleted(**{
        "trace_id": f"t{n}", "run_id": "r1", "dataset_item_id": f"i{n}", "output": {"a": [n]},
        "expected_output": "Paris", "status": "succeeded", "completed_at": AT,
        "evaluators": (EvaluatorSpec(type="exact_match"),), **kw})


def _score(trace: TraceCompleted, value: float, at: datetime, **kw) -> ScoreRecorded:
    return ScoreRecorded(**{
        "score_id": score_id(trace.run_item_id, "exact_match", "programmatic"),
        "run_item_id": trace.run_item_id, "run_id": "r1", "trace_id": trace.trace_id,
        "name": "exact_match", "value": value, "data_type": "boolean",
        "source": "programmatic", "evaluator": "exact_match", "observed_at": at, **kw})


async def test_bodies_as_consumed_give_the_rows_the_validated_events_give(migrated):
    a, b = _trace(1, usage={}), _trace(2, latency_ms=1.0, usage={"input_tokens": 3})
    ea = wrap(a, source="t", key="r1", id="ea")
    eb = wrap(b, source="t", key="r1", id="eb")
    sa = wrap(_score(a, 1.0, AT), source="t", key="r1", id="sa")
    sb = wrap(_score(b, 0.0, AT, comment="é \"quoted\" \\ ☃"), source="t", key="r1", id="sb")
    canonical = [[ea], [eb], [sa, sb]]
    assert all(e.raw is None for batch in canonical for e in batch)
    consumed = [
        [_record(ea, usage={})],  # pydantic fills both counts with 0
        [_record(eb, latency_ms=True, usage={"input_tokens": 3.0})],  # Postgres refuses both
        [_record(sa, value=True), _record(sb)],
    ]
    assert all(e.raw is not None for batch in consumed for e in batch)
    expected = await _project(migrated.dsn, canonical)
    assert sorted((r["trace_id"], r["input_tokens"], r["output_tokens"], r["latency_ms"])
                  for r in expected["run_items"]) == [("t1", 0, 0, None), ("t2", 3, 0, 1.0)]
    assert await _project(migrated.dsn, consumed) == expected


async def test_a_score_event_is_applied_once_though_it_has_no_applied_events_row(migrated):
    trace = _trace(1)
    first = wrap(_score(trace, 1.0, AT), source="t", key="r1", id="s1")
    newer = wrap(_score(trace, 0.0, AT + timedelta(minutes=2)), source="t", key="r1", id="s2")
    # The evaluator's scores of a trace posted again share their ids but not their time.
    again = wrap(_score(trace, 1.0, AT + timedelta(minutes=5)), source="t", key="r1", id="s1")
    failed = wrap(EvaluationFailed(
        failure_id="f1", run_item_id=trace.run_item_id, run_id="r1", name="exact_match",
        evaluator="exact_match", reason="boom", observed_at=AT + timedelta(minutes=1)),
        source="t", key="r1", id="f1")

    superseded = await _project(migrated.dsn, [[first], [newer], [again]])
    assert [(s["event_id"], s["value"]) for s in superseded["scores"]] == [("s2", 0.0)]
    assert [h["event_id"] for h in superseded["score_history"]] == ["s1"]  # the earlier value
    assert superseded["applied_events"] == []
    assert await _project(migrated.dsn, [[first, newer], [again, newer]]) == superseded

    # A failure newer than the score stands: the score's repeat is no newer score.
    standing = await _project(migrated.dsn, [[first], [failed], [again]])
    assert [(s["event_id"], s["observed_at"]) for s in standing["scores"]] == [("s1", AT)]
    assert [f["failure_id"] for f in standing["evaluation_failures"]] == ["f1"]
    assert standing["applied_events"] == ["f1"]
