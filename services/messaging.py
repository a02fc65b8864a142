"""Kafka plumbing shared by the services: topic creation, the event publisher and the dead-letter
path.

Subscribers are FastStream batch subscribers (see each service's app.py). Publishing on the hot path
goes straight through aiokafka's producer: FastStream's per-message publish costs ~8 µs of
middleware per event, which at 30,000 scores/s is a quarter of a core (docs/adr/0003).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from murmurhash2 import murmurhash2
from tenacity import AsyncRetrying, RetryCallState, stop_after_delay, wait_exponential

from schemas.envelope import Envelope, NotForThisConsumer, UndecodableEvent, unwrap
from services import metrics
from services.settings import RetrySettings, Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def records_as_consumed(msg: object) -> None:
    """FastStream decoder for the batch subscribers: they read `msg.raw_message` (aiokafka's
    ConsumerRecords) and decode it with `decode_records`, so FastStream's own JSON decoding of
    every body (~50 µs per trace in the projections) would be thrown away."""
    return None


def _key_hash(key: bytes) -> int:
    # Kafka's murmur2 (seed 0x9747b28c), in C: aiokafka's pure-Python one took ~5-10 µs a key,
    # and keys are run item ids, new for every trace (docs/adr/0007).
    return murmurhash2(key, 0x9747B28C) & 0x7FFFFFFF


def partition_for_key(key: bytes | None, all_partitions: list[int],
                      available: list[int]) -> int:
    """aiokafka's DefaultPartitioner: murmur2 of the key, as the Java client does, so every
    client puts a key on the same partition."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[_key_hash(key) % len(all_partitions)]


PRODUCER_OPTIONS = dict(acks="all", linger_ms=5, max_batch_size=1 << 20,
                        max_request_size=8 << 20, request_timeout_ms=30_000,
                        partitioner=partition_for_key)


def broker_factory(settings: Settings) -> KafkaBroker:
    """The FastStream broker every service subscribes with."""
    # FastStream's per-batch "Received"/"Processed" lines go to DEBUG; a handler's exception is
    # still logged at ERROR before the batch is nacked and redelivered.
    return KafkaBroker(settings.bootstrap, client_id="evalstream", logger=log,
                       log_level=logging.DEBUG, **PRODUCER_OPTIONS)


def subscribe_batches(broker: KafkaBroker, settings: Settings, topics: Sequence[str],
                      group_id: str, handler: Callable[[KafkaMessage], Awaitable[None]],
                      max_records: int | None = None) -> None:
    """Register `handler` for batches of `topics` in consumer group `group_id`, as
    `settings.consumers` consumers of this process (each with its own partitions: one works
    while another waits on the broker or Postgres, docs/adr/0007). A batch's offsets are
    committed after the handler returns; a raising handler gets the batch again. The handler
    reads `msg.raw_message` (see records_as_consumed). Batches hold at most `max_records`
    records (default: settings.batch_max_records)."""
    for _ in range(settings.consumers):
        broker.subscriber(
            *topics, batch=True, group_id=group_id, auto_offset_reset="earliest",
            max_records=max_records or settings.batch_max_records,
            batch_timeout_ms=settings.batch_timeout_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            ack_policy=AckPolicy.NACK_ON_ERROR, decoder=records_as_consumed)(handler)


async def ensure_topics(settings: Settings) -> None:
    """Create evalstream's topics if they are missing (idempotent; production may pre-create
    them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="evalstream-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.topics.all() if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.topic_partitions, 1) for t in missing])
            except TopicAlreadyExistsError:
                pass  # another process won the race
            log.info("created topics %s", missing)
    finally:
        await admin.close()


class EventPublisher:
    """Publishes envelopes in batches and returns once the broker acknowledged all of them."""

    def __init__(self, settings: Settings, source: str):
        self.settings = settings
        self.source = source
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the producer is made here, not in __init__.
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap,
                                          client_id=f"evalstream-{self.source}",
                                          **PRODUCER_OPTIONS)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, topic: str, envelopes: Sequence[Envelope],
                      bodies: Sequence[bytes] | None = None) -> int:
        """Publish with acks=all and wait for every acknowledgement; `bodies`, when given, are
        the envelopes' bodies already encoded."""
        if bodies is None:
            bodies = [env.body() for env in envelopes]
        await self.publish_raw(topic, [
            (env.key.encode() if env.key else None, body, env.headers())
            for env, body in zip(envelopes, bodies, strict=True)])
        return len(envelopes)

    async def publish_raw(self, topic: str, records: Sequence[tuple[
            bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> None:
        """Publish (key, value, headers) records with acks=all and wait for every
        acknowledgement.

        Records are appended to one record batch per partition and each batch is sent whole
        (aiokafka's create_batch/send_batch): `send()` per record cost ~15 µs of Python each,
        a batch append ~3. Partitions are chosen as `send()` would (partition_for_key), so a
        key's records keep their order on one partition."""
        if not records:
            return
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        limit = PRODUCER_OPTIONS["max_request_size"]
        batches: dict[int, list] = {}
        for key, value, headers in records:
            if value is not None and len(value) > limit:  # as send() would, before any is sent
                raise MessageSizeTooLargeError(
                    f"a record of {len(value)} bytes is larger than {limit} bytes")
            partition = partition_for_key(key, partitions, partitions)
            open_batches = batches.get(partition)
            if open_batches is None:
                open_batches = batches[partition] = [producer.create_batch()]
            if open_batches[-1].append(key=key, value=value, timestamp=None,
                                       headers=headers) is None:  # full: start another
                open_batches.append(producer.create_batch())
                open_batches[-1].append(key=key, value=value, timestamp=None, headers=headers)
        futures = []
        for partition, partition_batches in batches.items():
            for batch in partition_batches:
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        metrics.PUBLISHED.labels(self.source, topic).inc(len(records))

    async def dead_letter(self, records: Sequence[tuple[object, str]]) -> None:
        """Send undecodable records to the dead-letter topic, unchanged, with the reason
        attached."""
        out = []
        for record, reason in records:
            headers = list(getattr(record, "headers", ()) or ())
            headers += [
                ("dlq_reason", reason.encode()),
                ("dlq_topic", str(record.topic).encode()),
                ("dlq_partition", str(record.partition).encode()),
                ("dlq_offset", str(record.offset).encode()),
                ("dlq_consumer", self.source.encode()),
            ]
            out.append((record.key, record.value, headers))
            log.warning("dead-lettered %s[%s]@%s: %s", record.topic, record.partition,
                        record.offset, reason)
        await self.publish_raw(self.settings.topics.dead_letter, out)
        for record, _ in records:
            metrics.DEAD_LETTERS.labels(self.source, str(record.topic)).inc()


def lanes(records: Sequence, n: int) -> list[list]:
    """A batch's records in up to `n` lanes, each holding every record of its partitions (in
    their order): lanes share no key (so no read-model row), and each can be handled apart."""
    by_partition: dict[tuple[str, int], list] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)
    out: list[list] = [[] for _ in range(min(n, len(by_partition)))]
    for part in sorted(by_partition.values(), key=len, reverse=True):
        min(out, key=len).extend(part)  # the biggest partitions first, each to the emptiest lane
    return out


async def in_lanes(records: Sequence, n: int, prepare: Callable[[list], Awaitable[T]],
                   finish: Callable[[list, T], Awaitable[None]]) -> None:
    """A consumed batch in `n` lanes (see `lanes`): each lane is prepared (decoded), then finished
    (applied to Postgres) while the next lane is prepared, so Python and the I/O it waits for
    overlap: +5–7% end to end for the projections (docs/adr/0010); nothing measurable for the
    evaluator, whose publishing waits little.

    Returns once every lane is finished, when the batch's offsets may be committed. A lane that
    fails stops the others and the error is raised, so the whole batch comes again; the lanes
    already finished then change nothing, since events are idempotent (docs/adr/0001)."""
    applying: list[asyncio.Task] = []
    try:
        for lane in lanes(records, n):
            prepared = await prepare(lane)
            applying.append(asyncio.create_task(finish(lane, prepared)))
        await asyncio.gather(*applying)
    except BaseException:
        for task in applying:
            task.cancel()
        await asyncio.gather(*applying, return_exceptions=True)
        raise


YIELD_EVERY = 100


async def decode_records(records: Sequence, publisher: EventPublisher) -> list[Envelope]:
    """Decode a consumed batch; records that are not valid events go to the dead-letter topic
    with their reason, and the batch carries on without them, as it does without the records a
    redrive sent back for the other service. Every YIELD_EVERY records the event loop gets a
    turn, so that I/O in flight (a projections lane's statements) goes on."""
    envelopes, dead = [], []
    for n, record in enumerate(records, 1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        try:
            env = unwrap(record.headers, record.value, publisher.source)
        except NotForThisConsumer:  # redriven for the other service, which had given up on it
            continue
        except UndecodableEvent as e:
            dead.append((record, e.reason))
            continue
        except Exception as e:  # a record unwrap did not foresee must not stall its partition
            log.exception("unexpected error decoding %s[%s]@%s", record.topic, record.partition,
                          record.offset)
            dead.append((record, f"undecodable: {type(e).__name__}: {e}"))
            continue
        envelopes.append(env)
    if dead:
        await publisher.dead_letter(dead)
    return envelopes


async def until_done(step: Callable[[], Awaitable[T]], what: str, policy: RetrySettings) -> T:
    """Run a batch's `step` until it succeeds: a failure (Postgres or the broker unreachable,
    say) is retried with exponential backoff, the batch kept as it is, so it is neither decoded
    nor dead-lettered again. Past `policy.window_s` the last error is raised and the consumer
    gives the batch back, to be delivered again.

    Without this a consumer whose database is down took the batch again at once, endlessly: a
    core busy and thousands of tracebacks a second. Now: one warning per attempt, the first
    with its traceback."""

    def before_sleep(state: RetryCallState) -> None:
        metrics.RETRIES.labels(what).inc()
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (attempt %d): %s: %s; retrying in %.1f s", what,
                    state.attempt_number, type(error).__name__, error, wait,
                    exc_info=error if state.attempt_number == 1 else None)

    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s),
        stop=stop_after_delay(policy.window_s), before_sleep=before_sleep, reraise=True)

    async def attempt() -> T:  # a coroutine function: tenacity would not await a lambda's result
        return await step()

    result = await retrying(attempt)
    attempts = retrying.statistics.get("attempt_number", 1)
    if attempts > 1:
        log.warning("%s succeeded at attempt %d", what, attempts)
    return result
