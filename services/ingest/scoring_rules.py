"""Scoring rules: which traces outside runs (production traffic) are scored, and by what.

A rule names evaluator specs, the trace metadata it selects (`where`) and the share of those
traces it scores (`sample_rate`). Ingest gives each trace outside runs, as it is posted, the
specs of every enabled rule that selects it, so the trace's `TraceCompleted` carries them like
a run's trace carries its run's: the evaluator scores it with no lookup, and a replay rescores
it with the specs it was posted with. Rules are catalog changes: `ScoringRuleSet` and
`ScoringRuleDeleted` through the outbox, like a dataset's.

Sampling is by trace id alone, so the same trace is always in or out of a rule's sample (posted
again, it gets the same specs and the same event id), and rules sampling at 5% and at 20% score
the same traces where they overlap: the 5% are among the 20%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from schemas.catalog import ScoringRuleDeleted, ScoringRuleSet
from schemas.common import EvaluatorSpec, utcnow
from services.http import FieldError
from services.ingest.commands import SetScoringRule

_MISSING = object()


def sample_point(trace_id: str) -> float:
    """Where a trace falls in [0, 1): a rule with sample rate r scores it when this is < r."""
    digest = hashlib.blake2b(trace_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _lookup(metadata: Mapping[str, Any] | None, key: str) -> Any:
    value: Any = metadata
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    return a == b and (type(a) is bool) == (type(b) is bool)


def _matches(value: Any, wanted: Any) -> bool:
    options = wanted if isinstance(wanted, list) else [wanted]
    values = value if isinstance(value, list) else [value]
    return any(_same(v, w) for v in values for w in options)


@dataclass(frozen=True)
class Rule:
    name: str
    evaluators: tuple[EvaluatorSpec, ...]
    sample_rate: float = 1.0
    where: Mapping[str, Any] = field(default_factory=dict)

    def selects(self, trace_id: str, metadata: Mapping[str, Any] | None,
                point: float | None = None) -> bool:
        if (sample_point(trace_id) if point is None else point) >= self.sample_rate:
            return False
        return all((v := _lookup(metadata, key)) is not _MISSING and _matches(v, wanted)
                   for key, wanted in self.where.items())


class Selector:
    """The specs the enabled rules give each trace, as one tuple per combination of rules (so a
    batch encodes each combination's specs once)."""

    def __init__(self, rules: Sequence[Rule]):
        self.rules = sorted(rules, key=lambda r: r.name)
        self._combinations: dict[tuple[str, ...], tuple[EvaluatorSpec, ...]] = {}

    def specs(self, trace_id: str, metadata: Mapping[str, Any] | None
              ) -> tuple[EvaluatorSpec, ...]:
        if not self.rules:
            return ()
        point = sample_point(trace_id)
        chosen = tuple(r.name for r in self.rules if r.selects(trace_id, metadata, point))
        specs = self._combinations.get(chosen)
        if specs is None:
            specs = self._combinations[chosen] = tuple(
                s for r in self.rules if r.name in chosen for s in r.evaluators)
        return specs


def _rule(row: asyncpg.Record) -> Rule:
    return Rule(row["name"], tuple(EvaluatorSpec.model_validate(s) for s in row["evaluators"]),
                row["sample_rate"], row["where_metadata"])


async def enabled_rules(conn: asyncpg.Connection) -> list[Rule]:
    return [_rule(r) for r in await conn.fetch(
        "SELECT name, evaluators, sample_rate, where_metadata FROM scoring_rules"
        " WHERE enabled ORDER BY name")]


def describe(row: asyncpg.Record) -> dict[str, Any]:
    return {"name": row["name"], "evaluators": row["evaluators"],
            "sample_rate": row["sample_rate"], "where": row["where_metadata"],
            "enabled": row["enabled"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


_COLUMNS = "name, evaluators, sample_rate, where_metadata, enabled, created_at, updated_at"


async def list_rules(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [describe(r) for r in await conn.fetch(
        f"SELECT {_COLUMNS} FROM scoring_rules ORDER BY name")]


async def get_rule(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM scoring_rules WHERE name = $1", name)
    if row is None:
        raise FieldError(("path", "name"), f"scoring rule {name!r} not found", 404, "not_found")
    return describe(row)


async def set_rule(conn: asyncpg.Connection, name: str,
                   cmd: SetScoringRule) -> tuple[ScoringRuleSet, dict[str, Any]]:
    """Create or replace the rule (in the caller's transaction, with its outbox row). An enabled
    rule may not give a score name another enabled rule gives: a trace both select would carry
    two specs of one name. Returns the event and the rule as `describe` gives it."""
    event = ScoringRuleSet(name=name, evaluators=tuple(cmd.evaluators),
                           sample_rate=cmd.sample_rate, where=cmd.where, enabled=cmd.enabled,
                           set_at=utcnow())
    # One writer at a time, readers (posted traces) never held up: two rules set at once could
    # otherwise each miss the other's score names.
    await conn.execute("LOCK TABLE scoring_rules IN SHARE ROW EXCLUSIVE MODE")
    if cmd.enabled:
        taken = {s: r["name"] for r in await conn.fetch(
                     "SELECT name, evaluators FROM scoring_rules WHERE enabled AND name <> $1",
                     name)
                 for s in (EvaluatorSpec.model_validate(e).score_name for e in r["evaluators"])}
        for n, spec in enumerate(cmd.evaluators):
            if (other := taken.get(spec.score_name)) is not None:
                raise FieldError(("evaluators", n, "name"),
                                 f"score name {spec.score_name!r} is given by the enabled rule "
                                 f"{other!r} already; give this evaluator another `name`")
    specs = [s.model_dump(mode="json", exclude_none=True) for s in event.evaluators]
    created_at = await conn.fetchval(
        """INSERT INTO scoring_rules (name, evaluators, sample_rate, where_metadata, enabled,
                                      created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $6)
           ON CONFLICT (name) DO UPDATE SET evaluators = excluded.evaluators,
               sample_rate = excluded.sample_rate, where_metadata = excluded.where_metadata,
               enabled = excluded.enabled, updated_at = excluded.updated_at
           RETURNING created_at""",
        name, specs, event.sample_rate, event.where, event.enabled, event.set_at)
    # As given (a jsonb column, read back, would order the keys its own way).
    return event, {"name": name, "evaluators": specs, "sample_rate": event.sample_rate,
                   "where": event.where, "enabled": event.enabled, "created_at": created_at,
                   "updated_at": event.set_at}


async def delete_rule(conn: asyncpg.Connection, name: str) -> ScoringRuleDeleted:
    """Remove the rule (in the caller's transaction); a 404 naming it when there is none."""
    if await conn.fetchval("DELETE FROM scoring_rules WHERE name = $1 RETURNING 1", name) is None:
        raise FieldError(("path", "name"), f"scoring rule {name!r} not found", 404, "not_found")
    return ScoringRuleDeleted(name=name, deleted_at=utcnow())
