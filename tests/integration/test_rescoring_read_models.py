"""Rescoring's read models against a real Postgres: request progress, manual verdicts beside an
evaluator's failure, and repeated event ids come out the same whatever the batching or order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from schemas.catalog import RunDeleted
from schemas.common import EvaluatorSpec, score_id
from schemas.envelope import wrap
from schemas.rescoring import ScoreRequestsIssued
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import TraceCompleted
from services.evaluator.scoring import score_case
from services.projections import rescoring_views
from services.replay import score_request
from tests.scratch_read_model import project

pytestmark = pytest.mark.postgres

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _trace(n: int, **kw) -> TraceCompleted:
    return TraceCompleted(**{
        "trace_id": f"t{n}", "run_id": "r1", "dataset_item_id": f"i{n}", "output": "Paris",
        "expected_output": "Paris" if n % 3 else None, "status": "succeeded",
        "completed_at": AT, "evaluators": (EvaluatorSpec(type="exact_match"),), **kw})


def _request_log() -> list:
    """A request over 6 items (two with no expected output: nothing to score), its header, and
    everything the evaluator made of it."""
    header = ScoreRequestsIssued(request_id="q1", origin="evaluate", run_id="r1", requested=6,
                                 runs={"r1": 6}, requested_at=AT + timedelta(hours=1))
    log = [wrap(header, source="t", key="r1", id="h1")]
    for n in range(6):
        request = score_request(wrap(_trace(n), source="t", key="r1", id=f"e{n}"), "q1",
                                AT + timedelta(hours=1), None)
        log.append(score_case(request))
    return log


async def _apply(dsn: str, batches: list[list], query) -> object:
    return await project(dsn, batches, query)


async def test_request_progress_counts_cases_whatever_the_order(migrated):
    log = _request_log()

    async def progress(conn):
        return await rescoring_views.score_request_progress(conn, "q1")

    expected = await _apply(migrated.dsn, [log], progress)
    assert (expected["requested"], expected["completed"], expected["scored"],
            expected["unscored"], expected["failed"], expected["done"]) == (6, 6, 4, 2, 0, True)
    rng = random.Random(3)
    shuffled = log + rng.sample(log, 5)
    rng.shuffle(shuffled)
    assert await _apply(migrated.dsn, [shuffled[i:i + 4] for i in range(0, len(shuffled), 4)],
                        progress) == expected
    # Cases counted before the request's own event: not done, requested unknown.
    partial = await _apply(migrated.dsn, [log[1:]], progress)
    assert (partial["requested"], partial["completed"], partial["done"]) == (None, 6, False)


async def test_a_request_over_several_runs_is_done_without_a_run_deleted_meanwhile(migrated):
    """A replay over two runs, one deleted while its cases were being scored: the deleted run's
    cases (counted or not yet) are withdrawn, and the request is done once the other run's are
    in, whatever the order."""
    header = wrap(ScoreRequestsIssued(request_id="q2", origin="replay", run_id=None,
                                      requested=6, runs={"r1": 3, "r2": 3},
                                      requested_at=AT + timedelta(hours=1)),
                  source="t", key="q2", id="h2")
    cases = [score_case(score_request(
        wrap(_trace(n, run_id=run, dataset_item_id=f"{run}-{n}", expected_output="Paris"),
             source="t", key=run, id=f"{run}-e{n}"), "q2", AT + timedelta(hours=1), None))
        for run in ("r1", "r2") for n in range(3)]
    deleted = wrap(RunDeleted(run_id="r2", dataset_id="d1", deleted_at=AT + timedelta(hours=2)),
                   source="t", key="d1", id="x2")
    r1_cases, r2_cases = cases[:3], cases[3:]

    async def progress(conn):
        return await rescoring_views.score_request_progress(conn, "q2")

    def figures(p: dict) -> tuple:
        return p["requested"], p["completed"], p["withdrawn"], p["done"]

    # r2 deleted before any of its cases, after one, or after all: done once r1's are in.
    for log in ([header, *r1_cases, r2_cases[0], deleted, *r2_cases[1:]],
                [deleted, *r2_cases, header, *r1_cases],
                [header, *cases, deleted]):
        assert figures(await _apply(migrated.dsn, [log], progress)) == (6, 3, 3, True)
    # Without r1's last case it is not done; without the deletion, r2's cases are awaited.
    assert figures(await _apply(migrated.dsn, [[header, *r1_cases[:2], deleted]],
                                progress)) == (6, 2, 3, False)
    assert figures(await _apply(migrated.dsn, [[header, *r1_cases]], progress)) == (6, 3, 0,
                                                                                  False)


async def test_an_evaluate_of_a_run_deleted_meanwhile_is_done_with_its_cases_withdrawn(
        migrated):
    """An evaluate (one run) whose run is deleted while its cases are being scored: its progress
    stays known and is done, every case withdrawn, whatever the order (before, its row went with
    the run and its progress was unknown for good)."""
    header = wrap(ScoreRequestsIssued(request_id="q3", origin="evaluate", run_id="r1",
                                      requested=3, runs={"r1": 3},
                                      requested_at=AT + timedelta(hours=1)),
                  source="t", key="r1", id="h3")
    cases = [score_case(score_request(
        wrap(_trace(n, dataset_item_id=f"i-{n}", expected_output="Paris"), source="t",
             key="r1", id=f"e{n}"), "q3", AT + timedelta(hours=1), None)) for n in range(3)]
    deleted = wrap(RunDeleted(run_id="r1", dataset_id="d1", deleted_at=AT + timedelta(hours=2)),
                   source="t", key="d1", id="x3")

    async def progress(conn):
        p = await rescoring_views.score_request_progress(conn, "q3")
        return p and (p["requested"], p["completed"], p["withdrawn"], p["done"])

    for log in ([header, cases[0], deleted, *cases[1:]], [deleted, *cases, header],
                [header, *cases, deleted], [deleted, header]):
        assert await _apply(migrated.dsn, [log], progress) == (3, 0, 3, True), log
    # Not deleted: its cases count, and it is done once all three are in.
    assert await _apply(migrated.dsn, [[header, *cases]], progress) == (3, 3, 0, True)


async def test_a_verdict_leaves_the_evaluators_failure_and_score_alone(migrated):
    failure = EvaluationFailed(failure_id="f1", run_item_id="ri1", run_id="r1", name="tone",
                               evaluator="llm", reason="boom", observed_at=AT)
    verdict = ScoreRecorded(score_id=score_id("ri1", "tone", "manual"), run_item_id="ri1",
                            run_id="r1", name="tone", value=1.0, data_type="boolean",
                            source="manual", observed_at=AT + timedelta(minutes=5))

    async def state(conn):
        return (await conn.fetchval("SELECT count(*) FROM evaluation_failures"),
                await conn.fetchval("SELECT count(*) FROM scores"))

    f, v = wrap(failure, source="t", key="r1"), wrap(verdict, source="t", key="r1")
    assert await _apply(migrated.dsn, [[f], [v]], state) == (1, 1)
    assert await _apply(migrated.dsn, [[v], [f]], state) == (1, 1)
    assert await _apply(migrated.dsn, [[v, f]], state) == (1, 1)


async def test_the_first_of_a_repeated_event_id_wins_within_a_batch_as_across_batches(migrated):
    # A trace posted twice: one id (content address), two receipt times.
    first = wrap(_trace(1), source="t", key="r1", id="same")
    second = wrap(_trace(1, completed_at=AT + timedelta(seconds=1)), source="t", key="r1",
                  id="same")

    async def completed_at(conn):
        return await conn.fetchval("SELECT completed_at FROM run_items")

    assert await _apply(migrated.dsn, [[first], [second]], completed_at) == AT
    assert await _apply(migrated.dsn, [[first, second]], completed_at) == AT
