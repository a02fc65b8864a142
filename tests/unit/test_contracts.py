"""The event contracts: exported JSON Schema files match the models, and the CloudEvents binding
round-trips and refuses what is not an evalstream event with a reason."""

from __future__ import annotations

import json

import pytest

from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import (
    EVENT_MODELS,
    MODEL_BY_TYPE,
    UndecodableEvent,
    dumps_schema,
    json_schemas,
    unwrap,
    wrap,
)
from schemas.export import OUT
from schemas.traces import TraceCompleted


@pytest.mark.parametrize("name,schema", sorted(json_schemas().items()))
def test_exported_schema_matches_model(name, schema):
    path = OUT / name
    assert path.exists(), f"{name} not exported: run `make schemas`"
    assert path.read_text() == dumps_schema(schema), f"{name} is stale: run `make schemas`"


def test_every_exported_file_has_a_model():
    assert sorted(p.name for p in OUT.glob("*.schema.json")) == sorted(json_schemas())


def test_every_field_is_documented():
    for model in EVENT_MODELS:
        for field, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{field} has no description"


def _trace(**kw) -> TraceCompleted:
    return TraceCompleted(**{"trace_id": "t1", "run_id": "r1", "dataset_item_id": "i1",
                             "output": {"a": [1, 2]}, "expected_output": "x",
                             "status": "succeeded", "completed_at": utcnow(),
                             "evaluators": (EvaluatorSpec(type="contains", keywords=["a"]),),
                             **kw})


def test_round_trip_keeps_event_and_attributes():
    env = wrap(_trace(), source="test", key="r1")
    back = unwrap(env.headers(), env.body())
    assert back.event == env.event
    assert (back.id, back.source, back.type) == (env.id, "test", "evalstream.TraceCompleted.v1")
    assert back.event.evaluators[0].options == {"keywords": ["a"]}
    headers = dict(env.headers())
    assert headers["ce_specversion"] == b"1.0" and headers["content-type"] == b"application/json"


def test_a_plain_json_client_can_produce_an_event():
    """What kcat would send: headers by hand, body from the documented schema."""
    body = json.dumps({"trace_id": "t", "output": "Paris", "status": "succeeded",
                       "completed_at": "2026-11-22T10:00:00Z",
                       "evaluators": [{"type": "exact_match"}], "expected_output": "Paris"})
    env = unwrap([("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"),
                  ("ce_source", b"kcat"), ("ce_specversion", b"1.0")], body.encode())
    assert env.event.output == "Paris" and env.event.run_item_id


@pytest.mark.parametrize("headers,body,reason", [
    ([], b"{}", "missing CloudEvents header"),
    ([("ce_id", b"1"), ("ce_type", b"nope"), ("ce_source", b"s"), ("ce_specversion", b"1.0")],
     b"{}", "unknown ce_type"),
    ([("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"0.3")], b"{}", "unsupported ce_specversion"),
    ([("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"1.0")], b"{oops", "invalid TraceCompleted"),
    ([("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"1.0")], b'{"trace_id": "t"}', "status"),
    ([("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"1.0")], None, "empty body"),
    # Kafka headers may have no value: once an AttributeError that failed the whole batch again
    # and again.
    ([("ce_id", None), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"1.0")], b"{}", "header ce_id has no value"),
    ([("ce_id", b"\xff"), ("ce_type", b"evalstream.TraceCompleted.v1"), ("ce_source", b"s"),
      ("ce_specversion", b"1.0")], b"{}", "header is not UTF-8"),
])
def test_undecodable_records_carry_a_reason(headers, body, reason):
    with pytest.raises(UndecodableEvent) as e:
        unwrap(headers, body)
    assert reason in e.value.reason


def test_type_names_are_unique_and_versioned():
    assert len(MODEL_BY_TYPE) == len(EVENT_MODELS)
    assert all(t.endswith(".v1") for t in MODEL_BY_TYPE)


def test_a_nul_character_is_refused_but_its_escaped_spelling_is_not():
    headers = [("ce_id", b"1"), ("ce_type", b"evalstream.TraceCompleted.v1"),
               ("ce_source", b"s"), ("ce_specversion", b"1.0")]
    body = {"trace_id": "t", "status": "succeeded", "completed_at": "2026-11-22T10:00:00Z"}
    with pytest.raises(UndecodableEvent) as e:
        unwrap(headers, json.dumps({**body, "output": "a\x00b"}).encode())
    assert "U+0000" in e.value.reason
    text = unwrap(headers, json.dumps({**body, "output": "a\\u0000b"}).encode())
    assert text.event.output == "a\\u0000b"
