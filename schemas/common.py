"""Building blocks shared by every event contract: the frozen base model, ids and evaluator
specs."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Every deterministic id in evalstream is a UUIDv5 under this namespace, so any
# client (or a replay) that knows the inputs derives the same id.
EVALSTREAM_NAMESPACE = uuid.UUID("6f0c5a57-2c52-4d8e-9a53-3e5b0b2f7a10")

Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]
JSONValue = Any
ScoreSource = Literal["programmatic", "manual", "llm_judge"]
ScoreDataType = Literal["numeric", "boolean", "categorical"]
# A boolean or numeric score passes at or above its spec's `pass_threshold`, else this.
PASS_THRESHOLD = 0.5
TraceStatus = Literal["succeeded", "failed"]


def utcnow() -> datetime:
    return datetime.now(UTC)


# What json.dumps(value, sort_keys=True, separators=(",", ":"), default=str) uses, made once:
# json.dumps makes an encoder per call when given options.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the form every hash in evalstream is taken over."""
    return _CANONICAL_ENCODER.encode(value).encode()


_NAMESPACE_BYTES = EVALSTREAM_NAMESPACE.bytes
# The first hex digit of the UUID's 4th group with the RFC 4122 variant bits (10xx) set.
_VARIANT_DIGIT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}


def deterministic_id(*parts: object) -> str:
    """str(uuid.uuid5(EVALSTREAM_NAMESPACE, the parts joined by "|", None as "")), computed as
    uuid5 computes it (SHA-1 of namespace and name, version and variant bits set) but without the
    UUID objects, which took 60% of the time: the evaluator derives several ids per score. The
    bits are set on the hex digits themselves (version: digit 12 is "5"; variant: digit 16)."""
    name = "|".join(["" if p is None else str(p) for p in parts])
    h = hashlib.sha1(_NAMESPACE_BYTES + name.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


class Event(BaseModel):
    """Base of every event: immutable; unknown fields are ignored so that older readers survive
    additions."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class EvaluatorSpec(BaseModel):
    """One evaluator in force, in the flat form `{"type": "contains", "keywords": ["paris"]}`.

    Options other than `type` and `name` are the evaluator's own and are kept as given.
    """

    model_config = ConfigDict(frozen=True, extra="allow", json_schema_extra={
        "examples": [{"type": "exact_match"}, {"type": "contains", "keywords": ["paris"]},
                     {"type": "json_structure", "name": "shape", "required_keys": ["answer"]},
                     {"type": "json_schema", "schema": {"type": "object",
                                                        "required": ["answer"]}}],
    })

    type: str = Field(description="Registered evaluator type: `exact_match`, `contains`, "
                                  "`json_structure`, `json_schema`, `numeric`, `regex`, "
                                  "`similarity` or `llm_judge` (README, Evaluators).",
                      min_length=1, max_length=100)
    name: str | None = Field(default=None, max_length=200,
                             description="Score name; defaults to the evaluator type.")

    @property
    def score_name(self) -> str:
        return self.name or self.type

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def spec_hash(self) -> str:
        """Short hash of the full spec, carried by every score it produced."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()[:16]


DEFAULT_EVALUATORS: tuple[EvaluatorSpec, ...] = (EvaluatorSpec(type="exact_match"),)


def run_item_key(run_id: str | None, dataset_item_id: str | None, trace_id: str | None) -> str:
    """Identity of a run item: (run, dataset item) when both are known, else the trace."""
    if run_id and dataset_item_id:
        return deterministic_id("run-item", run_id, dataset_item_id)
    return deterministic_id("trace-item", run_id, trace_id)


def score_id(run_item_id: str, name: str, source: str) -> str:
    """A score is one per run item + name + source; a later value replaces it."""
    return deterministic_id("score", run_item_id, name, source)
