"""Deterministic ids are uuid5 under evalstream's namespace: the hand-rolled computation gives,
for any parts, exactly the string uuid.uuid5 gives, so ids in logs and read models still match."""

from __future__ import annotations

import random
import uuid

from schemas.common import EVALSTREAM_NAMESPACE, deterministic_id, run_item_key, score_id


def _uuid5(*parts: object) -> str:
    return str(uuid.uuid5(EVALSTREAM_NAMESPACE,
                          "|".join("" if p is None else str(p) for p in parts)))


def test_deterministic_ids_equal_uuid5_for_every_kind_of_part():
    rng = random.Random(11)
    alphabet = "abcXYZ019-_|: éü中☃\U0001f600"
    cases: list[tuple] = [(), ("",), (None,), (None, None), ("score", "", None, 0), (1.5, True)]
    for _ in range(3000):
        cases.append(tuple(
            rng.choice([None, rng.randint(-10**12, 10**12),
                        str(uuid.UUID(int=rng.getrandbits(128))),
                        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))])
            for _ in range(rng.randint(1, 4))))
    for parts in cases:
        got = deterministic_id(*parts)
        assert got == _uuid5(*parts), parts
        assert uuid.UUID(got).version == 5


def test_the_ids_of_stored_events_do_not_change():
    # Derived once with uuid.uuid5; a read model built before must keep matching.
    assert run_item_key("r1", "i1", "t1") == "d9ab6905-a9de-575a-8c74-2b6adba061f2"
    assert score_id("ri", "exact_match", "programmatic") == "418fe921-4542-59ec-812c-c0057e7242e0"
    assert run_item_key("", None, "t1") == "ce077560-f1cc-5d08-a40e-3e86df916015"


def test_trace_event_id_is_the_hash_of_the_whole_canonical_trace():
    """trace_event_id assembles the canonical JSON from parts (the evaluators encoded once per
    batch); it must equal the plain definition, or ids already in logs would stop matching."""
    import hashlib
    import random
    from datetime import UTC, datetime

    from schemas.common import EvaluatorSpec, canonical_json
    from schemas.traces import TraceCompleted
    from services.ingest.catalog import evaluators_json, trace_event_id

    rng = random.Random(7)
    values = [None, "", "Paris", "é ☃ \"q\" \\", 0, -3, 2.5, 10**20, True, [], {},
              {"b": [1, {"a": None}], "a": "x"}, [{"z": 1}, "y"]]
    for n in range(300):
        specs = tuple(EvaluatorSpec(type=rng.choice(["exact_match", "contains"]),
                                    **({"keywords": ["paris", "ü"]} if rng.random() < .5 else {}))
                      for _ in range(rng.randrange(0, 4)))
        trace = TraceCompleted(
            trace_id=f"t{n}", run_id=rng.choice([None, "r1"]), dataset_id=rng.choice([None, "d"]),
            dataset_item_id=rng.choice([None, f"i{n}"]), input=rng.choice(values),
            output=rng.choice(values), expected_output=rng.choice(values), evaluators=specs,
            status=rng.choice(["succeeded", "failed"]), error=rng.choice([None, "boom"]),
            latency_ms=rng.choice([None, 1.5]), cost=rng.choice([None, 0.25]),
            metadata=rng.choice([None, {"k": "v"}]), completed_at=datetime.now(UTC))
        body = trace.model_dump(mode="json", exclude={"completed_at"}, exclude_none=True)
        plain = deterministic_id("trace-completed",
                                 hashlib.sha256(canonical_json(body)).hexdigest())
        assert trace_event_id(trace) == plain
        assert trace_event_id(trace, evaluators_json(specs)) == plain
