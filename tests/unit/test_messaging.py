"""The Kafka plumbing's hot-path shortcuts give what the libraries they stand in for give: the
cached partitioner the same partition as aiokafka's (and so the Java client's) default partitioner,
and the batch subscribers' decoder the records untouched, with no JSON decoding of their bodies."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.messaging import partition_for_key, records_as_consumed


def test_the_c_partitioner_agrees_with_aiokafkas_default_partitioner():
    rng = random.Random(5)
    keys = [str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(3000)]
    keys += [rng.randbytes(n) for n in range(0, 40) for _ in range(20)]  # every tail length
    keys += [b"", "ключ-ü".encode(), b"\xff" * 17]
    default = DefaultPartitioner()
    for partitions in (1, 3, 8, 50):
        every = list(range(partitions))
        for key in keys:
            assert partition_for_key(key, every, every) == default(key, every, every), (
                key, partitions)


def test_without_a_key_the_partition_is_one_of_the_available_ones():
    chosen = {partition_for_key(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert chosen == {1, 3}
    assert {partition_for_key(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}


async def test_a_batch_subscriber_with_the_decoder_sees_the_records_as_sent():
    broker = KafkaBroker("localhost:9092")
    seen: list = []

    @broker.subscriber("events", batch=True, group_id="g", decoder=records_as_consumed,
                       ack_policy=AckPolicy.NACK_ON_ERROR)
    async def on_events(msg: KafkaMessage) -> None:
        seen.append([record.value for record in msg.raw_message])
        seen.append(await msg.decode())  # FastStream's own decoding would give a list

    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(b"not json", b'{"a": 1}', topic="events")
    assert seen == [[b"not json", b'{"a": 1}'], None]


async def test_a_record_decoding_fails_on_unforeseen_is_dead_lettered_not_retried(monkeypatch):
    """Any error decoding one record sends that record to the dead-letter topic with its reason;
    raised, it would fail the batch again and again, and its partition would stall."""
    from types import SimpleNamespace

    import services.messaging as messaging
    from schemas.common import utcnow
    from schemas.envelope import wrap
    from schemas.traces import TraceCompleted

    good = wrap(TraceCompleted(trace_id="t", output="x", status="succeeded",
                               completed_at=utcnow()), source="t", key="k")
    records = [SimpleNamespace(topic="traces", partition=0, offset=n, key=b"k",
                               headers=good.headers(), value=value)
               for n, value in enumerate([good.body(), b"boom", good.body()])]
    real_unwrap = messaging.unwrap

    def unwrap(headers, value, consumer=None):
        if value == b"boom":
            raise RecursionError("nested too deep")
        return real_unwrap(headers, value, consumer)

    dead: list = []

    class Publisher:
        source = "evaluator"

        async def dead_letter(self, letters):
            dead.extend(letters)

    monkeypatch.setattr(messaging, "unwrap", unwrap)
    envelopes = await messaging.decode_records(records, Publisher())
    assert [e.id for e in envelopes] == [good.id, good.id]
    assert [(r.offset, reason) for r, reason in dead] == [
        (1, "undecodable: RecursionError: nested too deep")]


def test_a_record_redriven_for_one_service_is_skipped_by_the_other():
    """A redrive sends a record back for the service that had given up on it
    (services/dead_letters.py); the other service's consumers skip it, while a rebuild or a
    replay (no consumer named) reads it as any record."""
    import pytest

    from schemas.common import utcnow
    from schemas.envelope import REDRIVEN_FOR, NotForThisConsumer, unwrap, wrap
    from schemas.traces import TraceCompleted

    env = wrap(TraceCompleted(trace_id="t", output="x", status="succeeded",
                              completed_at=utcnow()), source="t", key="k")
    headers = [*env.headers(), ("redriven_from", b"dlq[0]@3"), (REDRIVEN_FOR, b"projections")]
    with pytest.raises(NotForThisConsumer):
        unwrap(headers, env.body(), "evaluator")
    assert unwrap(headers, env.body(), "projections").id == env.id
    assert unwrap(headers, env.body()).id == env.id
    assert unwrap(env.headers(), env.body(), "evaluator").id == env.id
