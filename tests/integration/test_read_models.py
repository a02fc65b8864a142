"""The projection handlers against a real Postgres: a stored log applied in order, reversed,
shuffled with duplicates and in small batches always yields the same read models."""

from __future__ import annotations

import json
import random

import pytest

from schemas.envelope import unwrap, wrap
from services.evaluator.scoring import SOURCE, is_scorable, score_case
from services.projections import views
from tests.conftest import RESOURCES
from tests.scratch_read_model import project

pytestmark = pytest.mark.postgres

TABLES = {"datasets": "id", "dataset_items": "id", "runs": "id", "run_items": "run_item_id",
          "scores": "score_id", "score_history": "event_id",
          "evaluation_failures": "failure_id", "scoreless_cases": "run_item_id"}


def _log() -> list:
    out = []
    for line in (RESOURCES / "pipeline_events.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append(unwrap([(k, v.encode()) for k, v in rec["headers"].items()],
                          json.dumps(rec["body"]).encode()))
    return out


async def _project(dsn: str, batches: list[list]) -> tuple[dict, dict]:
    async def everything(conn) -> tuple[dict, dict]:
        tables = {}
        for table, key in TABLES.items():
            rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY {key}")
            tables[table] = [dict(r) for r in rows]
        summary = await views.run_summary(conn, "r1")
        results = await views.run_results(conn, "r1")
        scoring = await views.run_scoring(conn, "r1")
        return tables, {"summary": summary, "results": results, "scoring": scoring}

    return await project(dsn, batches, everything)


def _log_as_scored_now(log: list) -> list:
    """The same log as today's evaluator writes it: each case's scores and failures in one
    CaseScored (docs/adr/0008) instead of a ScoreRecorded per score and EvaluationFailed."""
    out = []
    for env in log:
        if env.source == SOURCE:
            continue  # what the evaluator of that time emitted
        out.append(env)
        if is_scorable(env.event):
            out.append(score_case(env))
    return out


@pytest.fixture(scope="module")
def log():
    return _log()


@pytest.fixture(scope="module", params=["score_per_event", "case_scored"])
def any_log(request):
    """The stored log, as the evaluator wrote it before ADR 0008 and as it writes it now."""
    return _log() if request.param == "score_per_event" else _log_as_scored_now(_log())


async def test_the_log_projects_to_the_expected_models(migrated, log):
    tables, answers = await _project(migrated.dsn, [log])
    summary = answers["summary"]
    counts = (summary["total_items"], summary["completed_items"], summary["failed_items"])
    assert counts == (3, 2, 1)
    assert answers["scoring"] == {"run_id": "r1", "total_items": 3, "traced_items": 3,
                                  "missing_items": 0, "missing_items_at_start": 0,
                                  "items_pending_scoring": 0, "scored": True}
    assert summary["total_cost"] == pytest.approx(0.03)  # t2 replaced by t2b
    assert summary["scores"]["exact_match"] == {"average": 1.0, "pass_rate": 1.0, "count": 2}
    # i1's contains score was rescored by request q1 with ["paris", "france"]: 1/2
    assert summary["scores"]["contains"]["average"] == pytest.approx((0.5 + 0.0) / 2)
    i1 = next(r for r in answers["results"] if r["dataset_item_id"] == "i1")
    contains = next(s for s in i1["scores"] if s["name"] == "contains")
    assert contains["value"] == 0.5
    # every value applied once: q1's is current, the value it replaced is kept as history
    rescored = [s for s in tables["scores"] if s["request_id"]]
    assert [s["request_id"] for s in rescored] == ["q1"]
    earlier = [h for h in tables["score_history"] if h["score_id"] == rescored[0]["score_id"]]
    assert [(h["request_id"], h["value"]) for h in earlier] == [(None, 1.0)]
    # the evaluator that could not run on t2 was superseded by nothing: its failure stays
    assert [f["name"] for f in tables["evaluation_failures"]] == ["gone"]
    assert tables["datasets"][0]["evaluators"] == [{"type": "exact_match"}]
    assert next(i for i in tables["dataset_items"] if i["id"] == "i3")["expected_output"] == "Roma"


async def test_a_log_of_case_scored_events_projects_as_one_of_score_events(migrated, log):
    """Rebuilding from a log written before ADR 0008 and from one written since gives the same read
    models; only the ledger ids of scores and failures differ (an event's id, or the id of the
    case's event and the score's)."""
    now = _log_as_scored_now(log)
    assert {type(e.event).__name__ for e in now} >= {"CaseScored"}
    assert not {type(e.event).__name__ for e in now} & {"ScoreRecorded", "EvaluationFailed"}

    def without_ledger_ids(projected):
        tables, answers = projected
        return {t: sorted(({k: v for k, v in row.items() if k != "event_id"} for row in rows),
                          key=repr)  # the tables were ordered by those ids
                # A case that failed on one evaluator and scored on another is a scoreless
                # report in the older log (its failure was an event of its own), not in today's;
                # either way the answers, items_pending_scoring among them, are the same.
                for t, rows in tables.items() if t != "scoreless_cases"}, answers

    before = without_ledger_ids(await _project(migrated.dsn, [log]))
    after = without_ledger_ids(await _project(migrated.dsn, [now]))
    assert after == before
    assert len(before[0]["scores"]) == 4 and len(before[0]["evaluation_failures"]) == 1
    assert len(before[0]["score_history"]) == 3


def _arranged(log: list, arrangement: str, seed: int = 7) -> list[list]:
    """The log as batches in another arrival order: one event at a time, reversed, shuffled
    with half of it delivered twice in batches of 5, or in batches of 3 with its start again."""
    if arrangement == "one_at_a_time":
        return [[e] for e in log]
    if arrangement == "reversed":
        return [list(reversed(log))]
    if arrangement == "shuffled_with_duplicates":
        rng = random.Random(seed)
        events = log + rng.sample(log, len(log) // 2)
        rng.shuffle(events)
        return [events[i:i + 5] for i in range(0, len(events), 5)]
    assert arrangement == "batches_of_3"
    return [log[i:i + 3] for i in range(0, len(log), 3)] + [log[:4]]


@pytest.mark.parametrize("arrangement", ["reversed", "shuffled_with_duplicates", "batches_of_3"])
async def test_arrival_order_and_repetition_do_not_matter(migrated, any_log, arrangement):
    expected = await _project(migrated.dsn, [any_log])
    assert await _project(migrated.dsn, _arranged(any_log, arrangement)) == expected


def _deleted(log: list) -> list:
    """The log with run r1 deleted at its end."""
    from datetime import timedelta

    from schemas.catalog import RunDeleted, RunStarted

    started = next(e.event for e in log if isinstance(e.event, RunStarted))
    deleted = RunDeleted(run_id=started.run_id, dataset_id=started.dataset_id,
                         deleted_at=started.started_at + timedelta(days=1))
    return [*log, wrap(deleted, source="evalstream/ingest", key=started.dataset_id)]


@pytest.mark.parametrize("arrangement", ["one_at_a_time", "reversed",
                                         "shuffled_with_duplicates", "batches_of_3"])
async def test_a_deleted_run_leaves_no_rows_whatever_the_order(migrated, any_log, arrangement):
    """Whether the run's traces and scores arrive before its RunDeleted or after it (in flight,
    or in a rebuild's order), nothing of the run remains; its dataset does."""
    tables, answers = await _project(migrated.dsn,
                                     _arranged(_deleted(any_log), arrangement, seed=11))
    assert answers == {"summary": None, "results": [], "scoring": None}
    assert {t: len(rows) for t, rows in tables.items()} == {
        "datasets": 1, "dataset_items": 3, "runs": 0, "run_items": 0, "scores": 0,
        "score_history": 0, "evaluation_failures": 0, "scoreless_cases": 0}


@pytest.mark.parametrize("arrangement", ["one_at_a_time", "reversed",
                                         "shuffled_with_duplicates", "batches_of_3"])
async def test_a_deleted_dataset_leaves_no_rows_whatever_the_order(migrated, any_log,
                                                                    arrangement):
    """Its run's RunDeleted, then its DatasetDeleted, as ingest publishes them: nothing of the
    dataset or its run remains, whenever its other events arrive."""
    from schemas.catalog import DatasetDeleted

    log = _deleted(any_log)
    run_deleted = log[-1].event
    log.append(wrap(DatasetDeleted(dataset_id=run_deleted.dataset_id,
                                   deleted_at=run_deleted.deleted_at),
                    source="evalstream/ingest", key=run_deleted.dataset_id))
    tables, answers = await _project(migrated.dsn, _arranged(log, arrangement, seed=13))
    assert answers == {"summary": None, "results": [], "scoring": None}
    assert {t: len(rows) for t, rows in tables.items()} == dict.fromkeys(TABLES, 0)


async def test_a_deletion_waits_for_a_concurrent_write_of_its_run(migrated, log):
    """Two transactions at once, as two projection processes or a rebuild's workers run them:
    one applies the run's trace and scores, the other its RunDeleted. The deletion waits for
    the write and removes what it wrote (without the lock both would commit, the deletion not
    seeing the rows, the write not seeing the tombstone, and the rows would outlive the run)."""
    import asyncio

    from services.database import create_pool, migrate
    from services.projections.read_models import apply_batch

    schema = f"rm_race_{random.randrange(1 << 30)}"
    await migrate(migrated.dsn, "read_model", schema)
    pool = await create_pool(migrated.dsn, schema, max_size=2)
    run_deleted = _deleted(log)[-1]
    writes = [e for e in _log_as_scored_now(log) if getattr(e.event, "run_id", None) == "r1"
              and type(e.event).__name__ in ("TraceCompleted", "CaseScored")]
    try:
        async with pool.acquire() as writer, pool.acquire() as deleter:
            async with writer.transaction():
                await apply_batch(writer, writes)
                deleting = asyncio.create_task(_apply_in_transaction(deleter, [run_deleted]))
                await asyncio.sleep(0.5)
                assert not deleting.done()  # waiting for the write's lock
            await deleting
            left = {t: await writer.fetchval(f"SELECT count(*) FROM {t} WHERE run_id = 'r1'")
                    for t in ("run_items", "scores", "evaluation_failures")}
        assert left == {"run_items": 0, "scores": 0, "evaluation_failures": 0}
    finally:
        async with pool.acquire() as admin:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def _apply_in_transaction(conn, batch) -> None:
    from services.projections.read_models import apply_batch

    async with conn.transaction():
        await apply_batch(conn, batch)


async def test_items_pending_scoring_follow_the_evaluators_reports(migrated):
    """A succeeded item is pending until the evaluator's report on its latest trace is applied,
    in whatever order the two arrive; a report with no score (nothing to compare with) counts, a
    person's verdict and the report on an earlier trace of the item do not."""
    from datetime import UTC, datetime, timedelta

    from schemas.catalog import RunStarted
    from schemas.common import EvaluatorSpec, score_id
    from schemas.scores import ScoreRecorded
    from schemas.traces import TraceCompleted

    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    started = wrap(RunStarted(run_id="r1", dataset_id="d1", name="v1", total_items=3,
                              evaluators=(EvaluatorSpec(type="exact_match"),), started_at=at),
                   source="evalstream/ingest", key="d1")

    def trace(n: int, completed_at: datetime, **kw) -> object:
        return wrap(TraceCompleted(**{
            "trace_id": f"t{n}-{completed_at:%H%M}", "run_id": "r1", "dataset_item_id": f"i{n}",
            "output": "Paris", "expected_output": "Paris", "status": "succeeded",
            "completed_at": completed_at, "evaluators": (EvaluatorSpec(type="exact_match"),),
            **kw}), source="evalstream/ingest", key=f"i{n}")

    t1, t2 = trace(1, at), trace(2, at, expected_output=None)  # t2: exact_match has no score
    t3 = trace(3, at, status="failed")  # never scored, never pending
    t1_again = trace(1, at + timedelta(hours=1), output="Lyon")
    verdict = wrap(ScoreRecorded(
        score_id=score_id(t1.event.run_item_id, "manual", "manual"),
        run_item_id=t1.event.run_item_id, run_id="r1", dataset_item_id="i1", name="manual",
        value=1.0, data_type="boolean", source="manual", observed_at=at + timedelta(hours=2)),
        source="evalstream/ingest", key="i1")

    async def pending(batches: list[list]) -> int:
        async def query(conn):
            return (await views.run_scoring(conn, "r1"))["items_pending_scoring"]
        return await project(migrated.dsn, batches, query)

    assert await pending([[started, t1, t2, t3]]) == 2
    assert await pending([[started, t1, t2, t3, score_case(t1)]]) == 1
    assert score_case(t2).event.scores == ()
    everything = [started, t1, t2, t3, score_case(t1), score_case(t2)]
    assert await pending([everything]) == 0
    assert await pending([list(reversed(everything))]) == 0  # reports before their traces
    # A later trace of i1: pending again until its own report, which an earlier report arriving
    # late, or a person's verdict, does not replace.
    assert await pending([everything, [t1_again, verdict], [score_case(t1)]]) == 1
    assert await pending([everything, [score_case(t1_again)], [t1_again, score_case(t1)]]) == 0
    # The same for a report without a score, and one whose every evaluator failed.
    t2_again = trace(2, at + timedelta(hours=1), expected_output=None, output="Lyon")
    assert await pending([everything, [t2_again], [score_case(t2)]]) == 1
    assert await pending([everything, [score_case(t2_again)], [t2_again, score_case(t2)]]) == 0
    t4 = trace(4, at, evaluators=(EvaluatorSpec(type="no_such_evaluator"),))
    assert score_case(t4).event.failures and not score_case(t4).event.scores
    assert await pending([everything, [t4]]) == 1
    assert await pending([everything, [t4, score_case(t4)]]) == 0


@pytest.mark.parametrize("arrangement", ["one_at_a_time", "reversed",
                                         "shuffled_with_duplicates", "batches_of_3"])
async def test_removed_items_stay_removed_unless_upserted_later_whatever_the_order(
        migrated, arrangement):
    from datetime import UTC, datetime, timedelta

    from schemas.catalog import (
        DatasetCreated,
        DatasetItem,
        DatasetItemsDeleted,
        DatasetItemsUpserted,
    )

    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def catalog(event) -> object:
        return wrap(event, source="evalstream/ingest", key="d1")

    def upserted(minutes: int, *items: tuple[str, str]) -> object:
        return catalog(DatasetItemsUpserted(
            dataset_id="d1", upserted_at=at + timedelta(minutes=minutes),
            items=tuple(DatasetItem(id=i, input="q", expected_output=out) for i, out in items)))

    def deleted(minutes: int, *ids: str) -> object:
        return catalog(DatasetItemsDeleted(dataset_id="d1", item_ids=ids,
                                           deleted_at=at + timedelta(minutes=minutes)))

    log = [catalog(DatasetCreated(dataset_id="d1", name="d", evaluators=(), created_at=at)),
           upserted(1, ("i1", "Paris"), ("i2", "Berlin"), ("i3", "Rome")),
           deleted(2, "i1", "i2"),
           upserted(3, ("i1", "Paris, France")),  # i1 is back, i2 stays removed
           deleted(4, "i3"), upserted(5, ("i4", "Madrid")), deleted(6, "i4"),
           upserted(7, ("i1", "Paris (France)"))]

    async def items(conn):
        return [(r["id"], r["expected_output"], r["upserts"]) for r in await conn.fetch(
            "SELECT id, expected_output, (SELECT array_agg(u.upserted_at ORDER BY 1)"
            " FROM dataset_item_upserts u WHERE u.dataset_id = i.dataset_id"
            " AND u.item_id = i.id) AS upserts FROM dataset_items i ORDER BY id")]

    # i1's content is its latest upsert's, and its upserts since its removal are known: it
    # joined the dataset again at minute 3 (a run started after that waits for its trace).
    expected = [("i1", "Paris (France)", [at + timedelta(minutes=3), at + timedelta(minutes=7)])]
    assert await project(migrated.dsn, [log], items) == expected
    assert await project(migrated.dsn, _arranged(log, arrangement, seed=5), items) == expected


@pytest.mark.parametrize("arrangement", ["one_at_a_time", "reversed", "reversed_one_at_a_time",
                                         "shuffled_with_duplicates", "batches_of_3"])
async def test_a_verdict_taken_back_stays_back_unless_given_again_later_whatever_the_order(
        migrated, arrangement):
    """Item i1: verdict, retraction, a later verdict (which counts); item i2: verdict and
    retraction (no verdict left, its value in the history); a retraction of i3's verdict that
    was never given. Every order gives the same tables, summary and score histories; deleting
    the run leaves nothing of any of it."""
    from datetime import UTC, datetime, timedelta

    from schemas.catalog import RunStarted
    from schemas.common import EvaluatorSpec, score_id
    from schemas.scores import ScoreRecorded, ScoreRetracted
    from schemas.traces import TraceCompleted
    from services.projections.rescoring_views import run_item_score_history

    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    traces = {n: TraceCompleted(
        trace_id=f"t{n}", run_id="r1", dataset_item_id=f"i{n}", output="Paris",
        status="succeeded", completed_at=at, evaluators=(EvaluatorSpec(type="exact_match"),))
        for n in (1, 2, 3)}
    log = [wrap(RunStarted(run_id="r1", dataset_id="d1", name="v1", total_items=3,
                           evaluators=(EvaluatorSpec(type="exact_match"),), started_at=at),
                source="evalstream/ingest", key="d1"),
           *(wrap(t, source="evalstream/ingest", key=t.run_item_id) for t in traces.values())]

    def verdict(n: int, minutes: int, value: float) -> object:
        t = traces[n]
        return wrap(ScoreRecorded(
            score_id=score_id(t.run_item_id, "manual", "manual"), run_item_id=t.run_item_id,
            run_id="r1", dataset_item_id=f"i{n}", trace_id=t.trace_id, name="manual",
            value=value, data_type="boolean", source="manual", created_by="ann",
            observed_at=at + timedelta(minutes=minutes)),
            source="evalstream/ingest", key=t.run_item_id)

    def retraction(n: int, minutes: int) -> object:
        t = traces[n]
        return wrap(ScoreRetracted(
            score_id=score_id(t.run_item_id, "manual", "manual"), run_item_id=t.run_item_id,
            run_id="r1", dataset_item_id=f"i{n}", trace_id=t.trace_id, name="manual",
            retracted_by="ann", retracted_at=at + timedelta(minutes=minutes)),
            source="evalstream/ingest", key=t.run_item_id)

    log += [verdict(1, 1, 0.0), retraction(1, 2), verdict(1, 3, 1.0),
            verdict(2, 1, 1.0), retraction(2, 2), retraction(3, 2)]

    async def everything(conn) -> dict:
        tables = {t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")]
                  for t in ("scores", "score_history", "retracted_scores")}
        summary = await views.run_summary(conn, "r1")
        histories = [await run_item_score_history(conn, "r1", f"i{n}") for n in (1, 2, 3)]
        return {"tables": tables, "summary": summary and summary["scores"],
                "histories": histories}

    expected = await project(migrated.dsn, [log], everything)
    # i1: the later verdict counts, the first is history; i2: nothing counts, its verdict is
    # history, shown under the retraction
    assert [(s["run_item_id"], s["value"]) for s in expected["tables"]["scores"]] == [
        (traces[1].run_item_id, 1.0)]
    assert sorted(h["value"] for h in expected["tables"]["score_history"]) == [0.0, 1.0]
    assert expected["summary"] == {"manual": {"average": 1.0, "pass_rate": 1.0, "count": 1}}
    i1, i2, i3 = (h["scores"] for h in expected["histories"])
    assert [(e["value"], e["retracted_at"], [v["value"] for v in e["history"]]) for e in i1] == [
        (1.0, None, [0.0, 1.0])]
    assert [(e["value"], e["retracted_by"], [v["value"] for v in e["history"]]) for e in i2] == [
        (None, "ann", [1.0])]
    assert [(e["value"], e["history"]) for e in i3] == [(None, None)]

    def arranged(events: list, seed: int) -> list[list]:
        if arrangement == "reversed_one_at_a_time":  # each retraction before its verdicts
            return [[e] for e in reversed(events)]
        return _arranged(events, arrangement, seed)

    assert await project(migrated.dsn, arranged(log, 17), everything) == expected
    gone = await project(migrated.dsn, arranged(_deleted(log), 19), everything)
    assert gone["tables"] == {"scores": [], "score_history": [], "retracted_scores": []}
    assert gone["summary"] is None and gone["histories"] == [None, None, None]


@pytest.mark.parametrize("arrangement", ["one_at_a_time", "reversed", "reversed_one_at_a_time",
                                         "shuffled_with_duplicates"])
async def test_the_latest_baseline_choice_stands_whatever_the_order(migrated, arrangement):
    """Choices of a dataset's baseline run, one undone and one older arriving last: the latest
    stands, also when it arrives before the dataset itself; the dataset's summary names it
    while the run exists."""
    from datetime import UTC, datetime, timedelta

    from schemas.catalog import DatasetBaselineSet, DatasetCreated, RunDeleted, RunStarted
    from schemas.common import EvaluatorSpec

    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def catalog(event) -> object:
        return wrap(event, source="evalstream/ingest", key="d1")

    specs = (EvaluatorSpec(type="exact_match"),)
    log = [catalog(DatasetCreated(dataset_id="d1", name="qa", evaluators=specs, created_at=at)),
           *(catalog(RunStarted(run_id=r, dataset_id="d1", name=r, total_items=0,
                                evaluators=specs, started_at=at + timedelta(minutes=n)))
             for n, r in enumerate(("r1", "r2"), 1)),
           catalog(DatasetBaselineSet(dataset_id="d1", run_id="r1",
                                      set_at=at + timedelta(minutes=3))),
           catalog(DatasetBaselineSet(dataset_id="d1", run_id=None,
                                      set_at=at + timedelta(minutes=4))),
           catalog(DatasetBaselineSet(dataset_id="d1", run_id="r2",
                                      set_at=at + timedelta(minutes=5)))]

    async def dataset(conn) -> tuple[dict, dict | None]:
        row = dict(await conn.fetchrow("SELECT * FROM datasets WHERE id = 'd1'"))
        summary = await views.dataset_summary(conn, "d1")
        return row, summary and {k: summary[k] for k in ("name", "baseline_run_id")}

    def arranged(events: list, seed: int) -> list[list]:
        if arrangement == "reversed_one_at_a_time":
            return [[e] for e in reversed(events)]
        return _arranged(events, arrangement, seed)

    expected = await project(migrated.dsn, [log], dataset)
    assert expected[1] == {"name": "qa", "baseline_run_id": "r2"}
    assert expected[0]["evaluators"] == [{"type": "exact_match"}]
    assert await project(migrated.dsn, arranged(log, 23), dataset) == expected
    # the baseline run deleted: the dataset has none to show
    gone = [*log, catalog(RunDeleted(run_id="r2", dataset_id="d1",
                                     deleted_at=at + timedelta(minutes=9)))]
    assert (await project(migrated.dsn, arranged(gone, 29), dataset))[1] == {
        "name": "qa", "baseline_run_id": None}
