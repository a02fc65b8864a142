"""Ingest's catalog of datasets, items and runs; every change writes its event to the outbox in the
same transaction, so a catalog row and its event never diverge."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import asyncpg

from schemas.catalog import (
    DatasetBaselineSet,
    DatasetCreated,
    DatasetDeleted,
    DatasetItem,
    DatasetItemsDeleted,
    DatasetItemsUpserted,
    EvaluatorsConfigured,
    RunDeleted,
    RunStarted,
    ScoringRuleDeleted,
)
from schemas.common import (
    DEFAULT_EVALUATORS,
    EvaluatorSpec,
    Event,
    canonical_json,
    deterministic_id,
    utcnow,
)
from schemas.envelope import Envelope, wrap
from schemas.traces import TraceCompleted
from services.http import FieldError
from services.ingest import scoring_rules
from services.ingest.commands import (
    CreateDataset,
    SetScoringRule,
    StartRun,
    TraceIn,
    UpsertItems,
)
from services.settings import Settings

SOURCE = "evalstream/ingest"
OUTBOX_CHANNEL = "evalstream_outbox"


def _first_repeat(ids: Sequence[str]) -> int | None:
    """The position of the first id that appeared before it, if any."""
    seen: set[str] = set()
    for n, i in enumerate(ids):
        if i in seen:
            return n
        seen.add(i)
    return None


async def _hold_dataset(conn: asyncpg.Connection, dataset_id: str) -> None:
    """Lock the dataset's row against its deletion until the transaction ends; a 404 naming
    the path's dataset_id when it is unknown or deleted."""
    if not await conn.fetchval("SELECT 1 FROM datasets WHERE id = $1"
                               " AND deleted_at IS NULL FOR SHARE", dataset_id):
        raise FieldError(("path", "dataset_id"), f"dataset {dataset_id} not found", 404,
                         "not_found")


def _specs(specs: Sequence[EvaluatorSpec] | None) -> tuple[EvaluatorSpec, ...]:
    return tuple(specs) if specs else DEFAULT_EVALUATORS


def _specs_json(specs: Sequence[EvaluatorSpec]) -> list[dict]:
    return [s.model_dump(mode="json", exclude_none=True) for s in specs]


def _rule_key(name: str) -> str:
    """A scoring rule's events are keyed by its name, apart from datasets' ids."""
    return f"scoring-rule:{name}"


class RunGone(LookupError):
    """The run was deleted."""

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id!r} was deleted")
        self.run_id = run_id


class Catalog:
    def __init__(self, pool: asyncpg.Pool, settings: Settings):
        self.pool = pool
        self.settings = settings
        # A run's evaluator snapshot never changes, so it is cached for the life of the process.
        self._runs: dict[str, tuple[str, tuple[EvaluatorSpec, ...]]] = {}

    async def _append_outbox(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
        await conn.executemany(
            "INSERT INTO outbox (topic, key, headers, body) VALUES ($1, $2, $3, $4)",
            [(self.settings.topics.catalog, e.key,
              [[k, v.decode()] for k, v in e.headers()], e.body()) for e in envelopes])
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")

    def _envelope(self, event: Event, key: str) -> Envelope:
        return wrap(event, source=SOURCE, key=key)

    async def create_dataset(self, cmd: CreateDataset) -> DatasetCreated:
        event = DatasetCreated(dataset_id=str(uuid.uuid4()), name=cmd.name,
                               description=cmd.description, evaluators=_specs(cmd.evaluators),
                               created_at=utcnow())
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO datasets (id, name, description, evaluators, created_at)"
                " VALUES ($1, $2, $3, $4, $5)", event.dataset_id, event.name, event.description,
                _specs_json(event.evaluators), event.created_at)
            await self._append_outbox(conn, [self._envelope(event, event.dataset_id)])
        return event

    async def configure_evaluators(self, dataset_id: str,
                                   specs: list[EvaluatorSpec]) -> EvaluatorsConfigured:
        event = EvaluatorsConfigured(dataset_id=dataset_id, evaluators=_specs(specs),
                                     configured_at=utcnow())
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.execute(
                "UPDATE datasets SET evaluators = $2 WHERE id = $1 AND deleted_at IS NULL",
                dataset_id, _specs_json(event.evaluators))
            if found == "UPDATE 0":
                raise FieldError(("path", "dataset_id"), f"dataset {dataset_id} not found", 404,
                                 "not_found")
            await self._append_outbox(conn, [self._envelope(event, dataset_id)])
        return event

    async def set_baseline(self, dataset_id: str, run_id: str | None) -> DatasetBaselineSet:
        """Choose the dataset's baseline run (or none); the run must be one of its runs, not
        deleted."""
        event = DatasetBaselineSet(dataset_id=dataset_id, run_id=run_id, set_at=utcnow())
        async with self.pool.acquire() as conn, conn.transaction():
            await _hold_dataset(conn, dataset_id)
            if run_id is not None:
                run = await conn.fetchrow("SELECT dataset_id, deleted_at FROM runs WHERE id = $1"
                                          " FOR SHARE", run_id)
                if run is None:
                    raise FieldError(("run_id",), f"unknown run {run_id!r}")
                if run["dataset_id"] != dataset_id:
                    raise FieldError(("run_id",), f"run {run_id!r} is a run of another dataset")
                if run["deleted_at"] is not None:
                    raise FieldError(("run_id",), f"run {run_id!r} was deleted")
            await self._append_outbox(conn, [self._envelope(event, dataset_id)])
        return event

    async def upsert_items(self, dataset_id: str, cmd: UpsertItems) -> DatasetItemsUpserted:
        items = tuple(DatasetItem(id=i.id or str(uuid.uuid4()), input=i.input,
                                  expected_output=i.expected_output, metadata=i.metadata)
                      for i in cmd.items)
        if (dup := _first_repeat([i.id for i in items])) is not None:
            raise FieldError(("items", dup, "id"), f"item id {items[dup].id!r} appears twice")
        event = DatasetItemsUpserted(dataset_id=dataset_id, items=items, upserted_at=utcnow())
        async with self.pool.acquire() as conn, conn.transaction():
            await _hold_dataset(conn, dataset_id)
            await conn.execute(
                """INSERT INTO dataset_items (id, dataset_id, input, expected_output, metadata,
                                              updated_at)
                   SELECT i.id, $2, i.input, i.expected_output, i.metadata, $3
                   FROM jsonb_to_recordset($1::jsonb)
                        AS i(id text, input jsonb, expected_output jsonb, metadata jsonb)
                   ON CONFLICT (dataset_id, id) DO UPDATE SET input = excluded.input,
                       expected_output = excluded.expected_output,
                       metadata = excluded.metadata, updated_at = excluded.updated_at""",
                [i.model_dump(mode="json") for i in items], dataset_id, event.upserted_at)
            await self._append_outbox(conn, [self._envelope(event, dataset_id)])
        return event

    async def delete_items(self, dataset_id: str, item_ids: list[str]) -> DatasetItemsDeleted:
        """Remove items from a dataset and publish DatasetItemsDeleted (through the outbox):
        runs started later do not count them, traces naming them are refused. All or none: an
        id not in the dataset is a 404 naming it, and nothing is removed."""
        if (dup := _first_repeat(item_ids)) is not None:
            raise FieldError(("ids", dup), f"item id {item_ids[dup]!r} appears twice")
        async with self.pool.acquire() as conn, conn.transaction():
            await _hold_dataset(conn, dataset_id)
            removed = set(await conn.fetchval(
                "WITH gone AS (DELETE FROM dataset_items WHERE dataset_id = $1"
                " AND id = ANY($2::text[]) RETURNING id) SELECT array_agg(id) FROM gone",
                dataset_id, item_ids) or ())
            if missing := [i for i in item_ids if i not in removed]:
                # Raising rolls the transaction back: the items found are not removed either.
                n = item_ids.index(missing[0])
                raise FieldError(("ids", n) if len(item_ids) > 1 else ("path", "item_id"),
                                 f"item {missing[0]!r} is not in dataset {dataset_id}", 404,
                                 "not_found")
            event = DatasetItemsDeleted(dataset_id=dataset_id, item_ids=tuple(item_ids),
                                        deleted_at=utcnow())
            await self._append_outbox(conn, [self._envelope(event, dataset_id)])
        return event

    async def start_run(self, cmd: StartRun) -> RunStarted:
        async with self.pool.acquire() as conn, conn.transaction():
            dataset = await conn.fetchrow(
                "SELECT evaluators, deleted_at FROM datasets WHERE id = $1 FOR SHARE",
                cmd.dataset_id)
            if dataset is None:
                raise FieldError(("dataset_id",), f"dataset {cmd.dataset_id} not found")
            if dataset["deleted_at"] is not None:
                raise FieldError(("dataset_id",), f"dataset {cmd.dataset_id} was deleted")
            total = await conn.fetchval(
                "SELECT count(*) FROM dataset_items WHERE dataset_id = $1", cmd.dataset_id)
            specs = cmd.evaluators or [EvaluatorSpec.model_validate(s)
                                       for s in dataset["evaluators"]]
            event = RunStarted(run_id=str(uuid.uuid4()), dataset_id=cmd.dataset_id,
                               name=cmd.name, evaluators=_specs(specs), metadata=cmd.metadata,
                               total_items=total, started_at=utcnow())
            await conn.execute(
                "INSERT INTO runs (id, dataset_id, name, evaluators, metadata, total_items,"
                " started_at) VALUES ($1, $2, $3, $4, $5, $6, $7)", event.run_id,
                event.dataset_id, event.name, _specs_json(event.evaluators), event.metadata,
                event.total_items, event.started_at)
            await self._append_outbox(conn, [self._envelope(event, event.dataset_id)])
        self._runs[event.run_id] = (event.dataset_id, event.evaluators)
        return event

    async def delete_run(self, run_id: str) -> RunDeleted:
        """Mark the run deleted, drop its run items, and publish RunDeleted (through the outbox,
        keyed by dataset like the run's other catalog events). Deleting a deleted run again
        answers as the first time and publishes nothing."""
        async with self.pool.acquire() as conn, conn.transaction():
            run = await conn.fetchrow(
                "SELECT dataset_id, deleted_at FROM runs WHERE id = $1 FOR UPDATE", run_id)
            if run is None:
                raise FieldError(("path", "run_id"), f"run {run_id} not found", 404, "not_found")
            if run["deleted_at"] is not None:
                return RunDeleted(run_id=run_id, dataset_id=run["dataset_id"],
                                  deleted_at=run["deleted_at"])
            event = RunDeleted(run_id=run_id, dataset_id=run["dataset_id"], deleted_at=utcnow())
            await conn.execute("UPDATE runs SET deleted_at = $2 WHERE id = $1", run_id,
                               event.deleted_at)
            await conn.execute("DELETE FROM run_items WHERE run_id = $1", run_id)
            await self._append_outbox(conn, [self._envelope(event, event.dataset_id)])
        self._runs.pop(run_id, None)
        return event

    async def delete_dataset(self, dataset_id: str) -> tuple[DatasetDeleted, list[str]]:
        """Delete a dataset: its items, and each of its runs not deleted yet as `delete_run`
        does (a RunDeleted each), then DatasetDeleted, all through the outbox in one
        transaction. Returns the event and every run of the dataset (all deleted now); deleting
        again answers as the first time."""
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR UPDATE: a run being started or items being added (FOR SHARE) finish first.
            dataset = await conn.fetchrow(
                "SELECT deleted_at FROM datasets WHERE id = $1 FOR UPDATE", dataset_id)
            if dataset is None:
                raise FieldError(("path", "dataset_id"), f"dataset {dataset_id} not found", 404,
                                 "not_found")
            every_run = [r["id"] for r in await conn.fetch(
                "SELECT id FROM runs WHERE dataset_id = $1 ORDER BY id", dataset_id)]
            if dataset["deleted_at"] is not None:
                return DatasetDeleted(dataset_id=dataset_id,
                                      deleted_at=dataset["deleted_at"]), every_run
            now = utcnow()
            runs = [r["id"] for r in await conn.fetch(
                "UPDATE runs SET deleted_at = $2 WHERE dataset_id = $1 AND deleted_at IS NULL"
                " RETURNING id", dataset_id, now)]
            await conn.execute("DELETE FROM run_items WHERE run_id = ANY($1::text[])", runs)
            await conn.execute("DELETE FROM dataset_items WHERE dataset_id = $1", dataset_id)
            await conn.execute("UPDATE datasets SET deleted_at = $2 WHERE id = $1", dataset_id,
                               now)
            event = DatasetDeleted(dataset_id=dataset_id, deleted_at=now)
            await self._append_outbox(conn, [
                *(self._envelope(RunDeleted(run_id=r, dataset_id=dataset_id, deleted_at=now),
                                 dataset_id) for r in sorted(runs)),
                self._envelope(event, dataset_id)])
        for run_id in runs:
            self._runs.pop(run_id, None)
        return event, every_run

    async def set_scoring_rule(self, name: str, cmd: SetScoringRule) -> dict:
        """Create or replace a scoring rule (a ScoringRuleSet); returns it as now stored."""
        async with self.pool.acquire() as conn, conn.transaction():
            event, rule = await scoring_rules.set_rule(conn, name, cmd)
            await self._append_outbox(conn, [self._envelope(event, _rule_key(name))])
        return rule

    async def delete_scoring_rule(self, name: str) -> ScoringRuleDeleted:
        async with self.pool.acquire() as conn, conn.transaction():
            event = await scoring_rules.delete_rule(conn, name)
            await self._append_outbox(conn, [self._envelope(event, _rule_key(name))])
        return event

    async def _runs_by_id(self, conn: asyncpg.Connection,
                          run_ids: set[str]) -> dict[str, tuple[str, tuple[EvaluatorSpec, ...]]]:
        """The runs' datasets and specs (cached: they never change); a deleted run is refused.
        Which runs are deleted is read every time, since any ingest instance may delete one."""
        if not run_ids:
            return {}
        missing = [r for r in run_ids if r not in self._runs]
        rows = await conn.fetch(
            "SELECT id, deleted_at, CASE WHEN id = ANY($2) THEN dataset_id END AS dataset_id,"
            " CASE WHEN id = ANY($2) THEN evaluators END AS evaluators"
            " FROM runs WHERE id = ANY($1) AND (deleted_at IS NOT NULL OR id = ANY($2))",
            list(run_ids), missing)
        for row in rows:
            if row["deleted_at"] is not None:
                self._runs.pop(row["id"], None)
                raise RunGone(row["id"])
            self._runs[row["id"]] = (row["dataset_id"], tuple(
                EvaluatorSpec.model_validate(s) for s in row["evaluators"]))
        return {r: self._runs[r] for r in run_ids if r in self._runs}

    async def complete_traces(self, traces: list[TraceIn]) -> list[Envelope]:
        """Resolve every trace against the catalog; raise FieldError before anything is sent."""
        run_ids = {t.run_id for t in traces if t.run_id}
        item_ids = list({t.dataset_item_id for t in traces if t.dataset_item_id})
        # Item ids are unique within a dataset, not across datasets: key by (dataset, item).
        items: dict[str, dict[str, asyncpg.Record]] = {}
        rules: scoring_rules.Selector | None = None
        async with self.pool.acquire() as conn:
            try:
                runs = await self._runs_by_id(conn, run_ids)
            except RunGone as gone:
                n = next(n for n, t in enumerate(traces) if t.run_id == gone.run_id)
                raise FieldError(("traces", n, "run_id"),
                                 f"run {gone.run_id!r} was deleted") from None
            if item_ids:
                # Only a trace without a run takes its dataset's evaluators; traces of runs (the
                # common case) need not have them read and decoded from jsonb for every item.
                with_specs = any(t.dataset_item_id and not t.run_id for t in traces)
                for row in await conn.fetch(
                        _ITEMS_WITH_SPECS if with_specs else _ITEMS, item_ids):
                    items.setdefault(row["id"], {})[row["dataset_id"]] = row
            if any(not t.run_id and not t.dataset_item_id for t in traces):
                # Traces outside runs and datasets (production traffic) take the specs of the
                # scoring rules that select them.
                rules = scoring_rules.Selector(await scoring_rules.enabled_rules(conn))
        now = utcnow()
        envelopes = []
        # The evaluators of a dataset, decoded once per dataset rather than once per trace.
        dataset_specs: dict[str, tuple[EvaluatorSpec, ...]] = {}
        # The evaluators' part of the traces' content address, encoded once per set of specs;
        # keyed by the tuple's id, the tuple kept alive beside it so the id stays its own.
        specs_json: dict[int, tuple[tuple[EvaluatorSpec, ...], str]] = {}
        for n, t in enumerate(traces):
            dataset_id, specs, expected, given_input = None, DEFAULT_EVALUATORS, None, t.input
            if rules is not None and not t.run_id and not t.dataset_item_id:
                specs = rules.specs(t.trace_id, t.metadata)
            elif t.run_id:
                if t.run_id not in runs:
                    raise FieldError(("traces", n, "run_id"), f"unknown run {t.run_id!r}")
                dataset_id, specs = runs[t.run_id]
            if t.dataset_item_id:
                candidates = items.get(t.dataset_item_id, {})
                if dataset_id:
                    item = candidates.get(dataset_id)
                    if item is None:
                        raise FieldError(("traces", n, "dataset_item_id"),
                                         f"item {t.dataset_item_id!r} is not in the run's dataset"
                                         " (or was removed from it)")
                elif len(candidates) == 1:
                    item = next(iter(candidates.values()))
                    specs = dataset_specs.get(item["dataset_id"])  # type: ignore[assignment]
                    if specs is None:
                        specs = dataset_specs[item["dataset_id"]] = tuple(
                            EvaluatorSpec.model_validate(s) for s in item["evaluators"])
                elif not candidates:
                    raise FieldError(("traces", n, "dataset_item_id"),
                                     f"unknown dataset item {t.dataset_item_id!r}")
                else:
                    raise FieldError(("traces", n, "dataset_item_id"),
                                     f"item id {t.dataset_item_id!r} exists in several datasets; "
                                     "give the trace its `run_id`")
                dataset_id, expected = item["dataset_id"], item["expected_output"]
                if given_input is None:
                    given_input = item["input"]
            event = TraceCompleted(
                trace_id=t.trace_id, run_id=t.run_id, dataset_id=dataset_id,
                dataset_item_id=t.dataset_item_id, input=given_input, output=t.output,
                expected_output=expected, evaluators=specs, status=t.status, error=t.error,
                latency_ms=t.latency_ms, usage=t.usage, cost=t.cost, metadata=t.metadata,
                completed_at=now)
            if (encoded := specs_json.get(id(specs))) is None:
                encoded = specs_json[id(specs)] = (specs, evaluators_json(specs))
            envelopes.append(wrap(event, source=SOURCE, key=event.run_item_id,
                                  id=trace_event_id(event, encoded[1]), time=now))
        return envelopes


_ITEMS = """SELECT id, dataset_id, input, expected_output FROM dataset_items
            WHERE id = ANY($1)"""
# The join drops no item: an item's dataset_id references its dataset.
_ITEMS_WITH_SPECS = """SELECT i.id, i.dataset_id, i.input, i.expected_output, d.evaluators
                       FROM dataset_items i JOIN datasets d ON d.id = i.dataset_id
                       WHERE i.id = ANY($1)"""

# The fields of TraceCompleted whose keys sort before "evaluators" in its canonical JSON.
_BEFORE_EVALUATORS = tuple(sorted(f for f in TraceCompleted.model_fields if f < "evaluators"))


def evaluators_json(specs: Sequence[EvaluatorSpec]) -> str:
    """Evaluator specs as they appear in a trace's canonical JSON (see trace_event_id)."""
    return canonical_json([s.model_dump(mode="json", exclude_none=True) for s in specs]).decode()


def trace_event_id(event: TraceCompleted, evaluators: str | None = None) -> str:
    """Content address of a trace (its receipt time aside): the same trace posted twice is the
    same event, and consumers skip the second one.

    The SHA-256 of canonical_json(the event without `completed_at`, None fields left out),
    assembled from parts so that the evaluators, the same for every trace of a run, are encoded
    once per batch (`evaluators`: evaluators_json(event.evaluators), computed here when not
    given). With its keys sorted, the JSON object is the fields sorting before "evaluators",
    then the evaluators, then the other fields."""
    body = event.model_dump(mode="json", exclude={"completed_at", "evaluators"},
                            exclude_none=True)
    head = {k: body.pop(k) for k in _BEFORE_EVALUATORS if k in body}
    if evaluators is None:
        evaluators = evaluators_json(event.evaluators)
    members = [canonical_json(head)[1:-1], b'"evaluators":' + evaluators.encode(),
               canonical_json(body)[1:-1]]
    text = b"{" + b",".join([m for m in members if m]) + b"}"
    return deterministic_id("trace-completed", hashlib.sha256(text).hexdigest())


def outbox_headers(raw: list[list[str]]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in raw]



