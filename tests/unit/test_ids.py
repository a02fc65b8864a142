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
