"""The CloudEvents 1.0 Kafka binding (binary mode) for every evalstream event.

Attributes travel as `ce_*` headers and the body is the event as JSON, so kcat or any Kafka
client can read and write the topics with nothing but the JSON Schema files beside this module.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from schemas.catalog import (
    DatasetBaselineSet,
    DatasetCreated,
    DatasetDeleted,
    DatasetItemsDeleted,
    DatasetItemsUpserted,
    EvaluatorsConfigured,
    RunDeleted,
    RunStarted,
    ScoringRuleDeleted,
    ScoringRuleSet,
)
from schemas.common import Event, utcnow
from schemas.rescoring import ScoreRequestsIssued, ScoringCompleted
from schemas.scores import CaseScored, EvaluationFailed, ScoreRecorded, ScoreRetracted
from schemas.traces import ScoreRequested, TraceCompleted

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"

EVENT_MODELS: tuple[type[Event], ...] = (
    TraceCompleted, ScoreRequested, ScoreRecorded, EvaluationFailed,
    DatasetCreated, DatasetItemsUpserted, EvaluatorsConfigured, RunStarted,
    ScoreRequestsIssued, ScoringCompleted, CaseScored, RunDeleted, DatasetDeleted,
    DatasetItemsDeleted, ScoreRetracted, DatasetBaselineSet, ScoringRuleSet, ScoringRuleDeleted,
)
TYPE_BY_MODEL: dict[type[Event], str] = {m: f"evalstream.{m.__name__}.v1" for m in EVENT_MODELS}
MODEL_BY_TYPE: dict[str, type[Event]] = {t: m for m, t in TYPE_BY_MODEL.items()}
# The headers that do not vary by event, encoded once (every score record carries them).
_TYPE_HEADERS = {m: ("ce_type", t.encode()) for m, t in TYPE_BY_MODEL.items()}
_SPEC_VERSION_HEADER = ("ce_specversion", SPEC_VERSION.encode())
_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())
_REQUIRED = ("ce_id", "ce_type", "ce_source", "ce_specversion")


# "\u0000" as a JSON escape, not as the text "\\u0000" (an escaped backslash, then "u0000").
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


# A record a redrive sent back for one consumer (services/dead_letters.py): the others skip it.
REDRIVEN_FOR = "redriven_for"


class NotForThisConsumer(Exception):
    """A redriven record meant for another consumer (its `redriven_for` header names it)."""


class UndecodableEvent(ValueError):
    """A record that is not a valid evalstream event; `reason` says why, for the dead-letter
    topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event with its CloudEvents attributes and its Kafka key."""

    event: Event
    id: str
    source: str
    time: datetime
    key: str | None = None
    # The record's body as consumed, kept so a consumer can hand it on (to Postgres, say) without
    # encoding the event again; None for an envelope made here. Not part of the event's identity.
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return TYPE_BY_MODEL[type(self.event)]

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            _SPEC_VERSION_HEADER,
            ("ce_id", self.id.encode()),
            _TYPE_HEADERS[type(self.event)],
            ("ce_source", self.source.encode()),
            _time_header(self.time),
            _CONTENT_TYPE_HEADER,
        ]

    def body(self) -> bytes:
        return self.event.__pydantic_serializer__.to_json(self.event, exclude_none=True)


# The ce_time header of the last time seen: the envelopes of a batch share one time, and
# isoformat() of an aware datetime costs ~0.7 µs. Matched by identity (equal times in other
# zones have other texts); the cached datetime is held, so its id cannot be reused.
_last_time_header: tuple[datetime, tuple[str, bytes]] | None = None


def _time_header(time: datetime) -> tuple[str, bytes]:
    global _last_time_header
    cached = _last_time_header
    if cached is not None and cached[0] is time:
        return cached[1]
    header = ("ce_time", time.isoformat().encode())
    _last_time_header = (time, header)
    return header


def wrap(event: Event, *, source: str, key: str | None, id: str | None = None,
         time: datetime | None = None) -> Envelope:
    return Envelope(event=event, id=id or str(uuid.uuid4()), source=source,
                    time=time or utcnow(), key=key)


def unwrap(headers: list[tuple[str, bytes]] | tuple, value: bytes | None,
           consumer: str | None = None) -> Envelope:
    """Decode one Kafka record; raises UndecodableEvent with a reason fit for a dead letter.
    Given the `consumer` decoding it (a service), a record a redrive sent back for another one
    raises NotForThisConsumer before anything else is looked at."""
    attr = {}
    try:
        for k, v in headers or ():
            if k.startswith("ce_"):
                attr[k] = v.decode()
            elif k == REDRIVEN_FOR and consumer is not None and v.decode() != consumer:
                raise NotForThisConsumer(v.decode())
    except UnicodeDecodeError as e:
        raise UndecodableEvent(f"header is not UTF-8: {e}") from None
    except AttributeError:  # a header without a value (None)
        raise UndecodableEvent(f"header {k} has no value") from None
    missing = [a for a in _REQUIRED if a not in attr]
    if missing:
        raise UndecodableEvent(f"missing CloudEvents header(s): {', '.join(missing)}")
    if attr["ce_specversion"] != SPEC_VERSION:
        raise UndecodableEvent(f"unsupported ce_specversion {attr['ce_specversion']!r}")
    model = MODEL_BY_TYPE.get(attr["ce_type"])
    if model is None:
        raise UndecodableEvent(f"unknown ce_type {attr['ce_type']!r}")
    if not value:
        raise UndecodableEvent("empty body")
    if b"\\u0000" in value and _ESCAPED_NUL.search(value):
        # Valid JSON, but no Postgres text or jsonb can hold it: refused here, by every consumer
        # alike, rather than scored by one and refused by another.
        raise UndecodableEvent("a string contains U+0000 (NUL), which evalstream cannot store")
    try:
        event = model.model_validate_json(value)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise UndecodableEvent(
            f"invalid {model.__name__}: {loc}: {first['msg']} ({e.error_count()} error(s))"
        ) from None
    try:
        time = datetime.fromisoformat(attr["ce_time"]) if "ce_time" in attr else utcnow()
    except ValueError:
        raise UndecodableEvent(f"ce_time is not RFC 3339: {attr['ce_time']!r}") from None
    return Envelope(event=event, id=attr["ce_id"], source=attr["ce_source"], time=time,
                    raw=value)


def json_schemas() -> dict[str, dict]:
    """The JSON Schema of every event, by file name, as exported under schemas/json/."""
    out = {}
    for model, ce_type in TYPE_BY_MODEL.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://evalstream.dev/schemas/{ce_type}.json"
        schema["x-cloudevents-type"] = ce_type
        out[f"{model.__name__}.schema.json"] = schema
    return out


def dumps_schema(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
