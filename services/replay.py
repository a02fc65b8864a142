"""`evalstream replay`: reads finished traces back from the log and requests their rescoring.

Each selected run item's latest succeeded `TraceCompleted` is republished as a self-contained
`ScoreRequested` (with the trace's own evaluator specs or the given ones), all under one request
id and one request time, so the evaluator rescores them and the new values replace the old ones,
which stay in history. Two passes over the traces topic keep memory small: the first finds each
run item's latest trace (as the projections decide it: completion time, then event id), the
second republishes exactly those, in batches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm import tqdm

from schemas.catalog import RunDeleted, ScoringRuleDeleted, ScoringRuleSet
from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import TYPE_BY_MODEL, Envelope, UndecodableEvent, unwrap, wrap
from schemas.rescoring import ScoreRequestsIssued, issued_event_id, score_request_event_id
from schemas.traces import ScoreRequested, TraceCompleted
from services.evaluator.evaluators import SpecError, validate_spec
from services.ingest.scoring_rules import Rule
from services.log_reader import LogReader
from services.messaging import EventPublisher
from services.projections.retention import live_cut
from services.settings import Settings

SOURCE = "evalstream/replay"
TRACE_TYPE = TYPE_BY_MODEL[TraceCompleted].encode()
RUN_DELETED_TYPE = TYPE_BY_MODEL[RunDeleted].encode()
RULE_TYPES = {TYPE_BY_MODEL[ScoringRuleSet].encode(): ScoringRuleSet,
              TYPE_BY_MODEL[ScoringRuleDeleted].encode(): ScoringRuleDeleted}
IN_FLIGHT = 3  # batches of score requests awaiting the broker's acks at once


class SpecFileError(ValueError):
    """An evaluators file that cannot be used; the message names the file and the field."""


def load_specs(path: Path, *, check: bool = True) -> tuple[EvaluatorSpec, ...]:
    """Evaluator specs from a JSON or YAML file: a list of specs, or `{"evaluators": [...]}`.
    With `check`, each one's type and options are checked here (against the evaluators this
    process knows, its plugins included); without, only its form, and the API that takes them
    checks the rest (a client need not have a server's plugins)."""
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise SpecFileError(f"{path}: {e}") from None
    if isinstance(data, dict) and "evaluators" in data:
        data = data["evaluators"]
    if not isinstance(data, list) or not data:
        raise SpecFileError(f"{path}: expected a non-empty list of evaluator specs")
    specs = []
    for n, raw in enumerate(data):
        try:
            spec = EvaluatorSpec.model_validate(raw)
            if check:
                validate_spec(spec)
        except ValidationError as e:
            loc = ".".join(str(p) for p in e.errors()[0]["loc"])
            raise SpecFileError(f"{path}: [{n}].{loc}: {e.errors()[0]['msg']}") from None
        except SpecError as e:
            raise SpecFileError(f"{path}: [{n}].{e.field}: {e.message}") from None
        specs.append(spec)
    names = [s.score_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecFileError(f"{path}: two evaluators would record the same score name {dupes}; "
                            "give one of them a `name`")
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which traces to rescore: every kind given must match (ids of one kind are alternatives).
    `outside_runs`: traces of no run (production traffic); `rule`: the traces a scoring rule
    selects (outside runs and datasets, its metadata and its sample), resolved from the log by
    `rule_name` (replay does it)."""

    since: datetime | None = None
    run_ids: frozenset[str] = frozenset()
    dataset_ids: frozenset[str] = frozenset()
    trace_ids: frozenset[str] = frozenset()
    outside_runs: bool = False
    rule_name: str | None = None
    rule: Rule | None = None

    def matches(self, trace: TraceCompleted | _TraceRef) -> bool:
        return (trace.status == "succeeded"
                and (self.since is None or trace.completed_at >= self.since)
                and (not self.run_ids or trace.run_id in self.run_ids)
                and (not self.dataset_ids or trace.dataset_id in self.dataset_ids)
                and (not self.trace_ids or trace.trace_id in self.trace_ids)
                and (not self.outside_runs or trace.run_id is None)
                and (self.rule is None or (
                    trace.run_id is None and trace.dataset_item_id is None
                    and self.rule.selects(trace.trace_id, trace.metadata))))

    def describe(self) -> dict[str, list[str] | str | bool]:
        out: dict[str, list[str] | str | bool] = {}
        if self.since is not None:
            out["since"] = self.since.isoformat()
        for key, ids in (("run_ids", self.run_ids), ("dataset_ids", self.dataset_ids),
                         ("trace_ids", self.trace_ids)):
            if ids:
                out[key] = sorted(ids)
        if self.outside_runs:
            out["outside_runs"] = True
        if self.rule_name is not None:
            out["rule"] = self.rule_name
        return out


class UnknownRule(LookupError):
    """`--rule` names no scoring rule the log holds (never set, or deleted)."""


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (without a zone: UTC), or a duration before now (`7d`, `24h`)."""
    from services.reports import parse_time

    return parse_time(text, utcnow())


def score_request(env: Envelope, request_id: str, requested_at: datetime,
                  specs: tuple[EvaluatorSpec, ...] | None) -> Envelope:
    """The ScoreRequested that rescores one logged trace: same case, given or its own specs."""
    t: TraceCompleted = env.event  # type: ignore[assignment]
    # Built without validation: every field comes from a validated event or validated specs.
    event = ScoreRequested.model_construct(
        run_id=t.run_id, dataset_id=t.dataset_id, dataset_item_id=t.dataset_item_id,
        trace_id=t.trace_id, input=t.input, output=t.output, expected_output=t.expected_output,
        evaluators=specs if specs is not None else t.evaluators, request_id=request_id,
        requested_at=requested_at)
    return wrap(event, source=SOURCE, key=t.run_item_id, time=requested_at,
                id=score_request_event_id(request_id, t.run_item_id))


@dataclass
class ReplayReport:
    request_id: str
    requested_at: datetime
    log_records: int = 0
    matched: int = 0
    requested: int = 0
    by_run: Counter = field(default_factory=Counter)
    undecodable: int = 0
    deleted: int = 0  # traces matched but of deleted runs, which are not rescored
    # traces matched but outside runs and older than the read models' retention cut, which
    # would record scores that no trace shows (docs/adr/0017)
    expired: int = 0
    interrupted: bool = False
    scan_seconds: float = 0.0
    request_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"request_id": self.request_id, "requested_at": self.requested_at.isoformat(),
                "log_records": self.log_records, "matched": self.matched,
                "requested": self.requested, "runs": dict(sorted(self.by_run.items())),
                "undecodable": self.undecodable, "deleted": self.deleted,
                "expired": self.expired,
                "interrupted": self.interrupted,
                "scan_seconds": round(self.scan_seconds, 3),
                "request_seconds": round(self.request_seconds, 3)}


class _TraceRef(BaseModel):
    """What the first pass reads of a TraceCompleted: enough to select and rank it. Parsing only
    this is what makes the pass cheap; the second pass decodes the chosen traces in full."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    trace_id: str
    run_id: str | None = None
    dataset_id: str | None = None
    dataset_item_id: str | None = None
    status: str
    completed_at: datetime


class _TraceRefWithMetadata(_TraceRef):
    """The first pass's read when a scoring rule selects: its metadata too."""

    metadata: dict | None = None


def _is_trace(record) -> bool:
    return _is_type(record, TRACE_TYPE)


def _is_type(record, ce_type: bytes) -> bool:
    return any(k == "ce_type" and v == ce_type for k, v in record.headers or ())


async def catalog_facts(settings: Settings) -> tuple[set[str], dict[str, Rule]]:
    """From the (small) catalog topic: the runs deleted so far, whose traces are not rescored
    since the read models would skip the results (docs/adr/0009), and the scoring rules as they
    now stand (the latest event of each name; a deleted one left out)."""
    deleted: set[str] = set()
    rules: dict[str, Rule] = {}
    async with LogReader(settings, [settings.topics.catalog],
                         client_id="evalstream-replay-catalog") as reader:
        async for batch in reader.batches(await reader.end_offsets()):
            for record in batch:
                try:
                    if _is_type(record, RUN_DELETED_TYPE):
                        deleted.add(RunDeleted.model_validate_json(record.value or b"").run_id)
                    elif (model := _rule_model(record)) is not None:
                        event = model.model_validate_json(record.value or b"")
                        if isinstance(event, ScoringRuleSet):
                            rules[event.name] = Rule(event.name, event.evaluators,
                                                     event.sample_rate, event.where)
                        else:
                            rules.pop(event.name, None)
                except ValidationError:
                    continue  # dead-lettered by the consumers
    return deleted, rules


def _rule_model(record) -> type[ScoringRuleSet] | type[ScoringRuleDeleted] | None:
    return next((RULE_TYPES.get(v) for k, v in record.headers if k == "ce_type"), None)


def _event_id(record) -> str:
    return next((v.decode() for k, v in record.headers if k == "ce_id"), "")


async def replay(settings: Settings, selection: ReplayFilter,
                 specs: tuple[EvaluatorSpec, ...] | None = None, *, request_id: str | None = None,
                 progress: bool = True, batch_size: int = 2000) -> ReplayReport:
    """Request the rescoring of every selected run item; returns what was requested. Cancelled
    (Ctrl-C), it stops after the batch in flight and reports what it had requested."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = ReplayReport(request_id=request_id or str(uuid.uuid4()), requested_at=utcnow())
    reader = LogReader(settings, [settings.topics.traces], client_id="evalstream-replay",
                       max_records=batch_size)
    publisher = EventPublisher(settings, "replay")
    await reader.start()
    await publisher.start()
    in_flight: deque[asyncio.Task] = deque()

    async def send(envelopes: list[Envelope]) -> int:
        await publisher.publish(settings.topics.score_requests, envelopes)
        report.requested += len(envelopes)
        report.by_run.update(e.event.run_id or "" for e in envelopes)
        return len(envelopes)

    try:
        try:
            deleted, rules = await catalog_facts(settings)
            cut = await live_cut(settings) if settings.database_url else None
            if selection.rule_name is not None:
                rule = rules.get(selection.rule_name)
                if rule is None:
                    raise UnknownRule(f"no scoring rule {selection.rule_name!r} in the log "
                                      "(never set, or deleted)")
                selection = dataclasses.replace(selection, rule=rule)
                specs = specs if specs is not None else rule.evaluators
            ref = _TraceRefWithMetadata if selection.rule is not None else _TraceRef
            ends = await reader.end_offsets()
            report.log_records = await reader.remaining(ends)

            # Pass 1: where in the log each selected run item's latest trace is.
            started = loop.time()
            latest: dict[tuple, tuple[tuple[datetime, str], tuple[str, int, int]]] = {}
            with tqdm(total=report.log_records, unit="ev", desc="scanning traces",
                      disable=not progress, leave=False) as bar:
                async for batch in reader.batches(ends):
                    for record in batch:
                        if not _is_trace(record):
                            continue
                        try:
                            trace = ref.model_validate_json(record.value or b"")
                        except ValidationError:
                            report.undecodable += 1  # the consumers dead-lettered it already
                            continue
                        if not selection.matches(trace):
                            continue
                        if trace.run_id in deleted:
                            report.deleted += 1
                            continue
                        if cut is not None and trace.run_id is None and trace.completed_at < cut:
                            report.expired += 1
                            continue
                        report.matched += 1
                        # The run item, as run_item_key identifies it (without hashing).
                        item = ((trace.run_id, trace.dataset_item_id)
                                if trace.run_id and trace.dataset_item_id
                                else ("trace", trace.run_id, trace.trace_id))
                        rank = (trace.completed_at, _event_id(record))
                        cur = latest.get(item)
                        if cur is None or rank > cur[0]:
                            latest[item] = (rank, (record.topic, record.partition,
                                                   record.offset))
                    bar.update(len(batch))
            wanted = {where for _, where in latest.values()}
            del latest
            report.scan_seconds = loop.time() - started

            # Pass 2: republish exactly those, in batches, a few in flight while the next
            # ones are read and built.
            started = loop.time()
            await reader.seek_to_beginning()
            pending: list[Envelope] = []
            with tqdm(total=len(wanted), unit="req", desc="requesting rescores",
                      disable=not progress) as bar:
                async for batch in reader.batches(ends):
                    for record in batch:
                        if (record.topic, record.partition, record.offset) not in wanted:
                            continue
                        try:
                            env = unwrap(record.headers, record.value)
                        except UndecodableEvent:
                            report.undecodable += 1
                            continue
                        pending.append(score_request(env, report.request_id,
                                                     report.requested_at, specs))
                    if len(pending) >= batch_size:
                        if len(in_flight) >= IN_FLIGHT:
                            # Popped once done, so that Ctrl-C meanwhile still awaits it below.
                            bar.update(await asyncio.shield(in_flight[0]))
                            in_flight.popleft()
                        in_flight.append(asyncio.create_task(send(pending)))
                        pending = []
                if pending:
                    in_flight.append(asyncio.create_task(send(pending)))
                while in_flight:
                    bar.update(await asyncio.shield(in_flight[0]))
                    in_flight.popleft()
            report.request_seconds = loop.time() - started
        except asyncio.CancelledError:
            # Ctrl-C: what was sent stays sent (and gets scored); the request's record says so.
            report.interrupted = True
            if report.scan_seconds:
                report.request_seconds = loop.time() - started
            else:
                report.scan_seconds = loop.time() - started
            for task in in_flight:
                await asyncio.shield(task)
        runs = [r for r in report.by_run if r]
        header = ScoreRequestsIssued(
            request_id=report.request_id, origin="replay",
            run_id=runs[0] if len(report.by_run) == 1 and runs else None,
            requested=report.requested, runs=dict(report.by_run), evaluators=specs,
            filters=selection.describe() or None, interrupted=report.interrupted,
            requested_at=report.requested_at)
        await publisher.publish(settings.topics.catalog, [wrap(
            header, source=SOURCE, key=report.request_id, time=report.requested_at,
            id=issued_event_id(report.request_id))])
    finally:
        await publisher.stop()
        await reader.stop()
    return report
