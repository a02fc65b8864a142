"""Reads topics back from offset zero, without a consumer group, up to end offsets captured when
asked: what `evalstream replay` and `evalstream projections rebuild` share.

A plain aiokafka consumer assigns itself every partition, so no running consumer group is
disturbed; nothing is committed, unless a reader given a `group_id` is asked to (it never joins
that group: it only keeps its offsets there, as `evalstream dead-letters redrive` does).

Offsets are never looked up by timestamp (unreliable on the development broker); a `since` filter
goes by the events' own time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.settings import Settings

Offsets = dict[TopicPartition, int]


class LogReader:
    def __init__(self, settings: Settings, topics: list[str], *, client_id: str,
                 max_records: int = 5000, only: Collection[TopicPartition] | None = None,
                 group_id: str | None = None):
        """Reads `topics`, or only the partitions `only` of them; `group_id` is where
        `committed` and `commit` keep offsets."""
        self.settings, self.topics, self.group_id = settings, topics, group_id
        self.client_id, self.max_records = client_id, max_records
        self.only = None if only is None else set(only)
        self.partitions: list[TopicPartition] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, client_id=self.client_id,
            group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
            fetch_max_wait_ms=50)
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()  # a consumer that never started, closed all the same
            raise
        known = await self._consumer.topics()  # also loads the metadata partitions_for_topic reads
        missing = [t for t in self.topics if t not in known]
        if missing:
            raise LookupError(f"topic(s) not found: {', '.join(missing)}")
        self.partitions = [TopicPartition(t, p) for t in self.topics
                           for p in sorted(self._consumer.partitions_for_topic(t) or ())
                           if self.only is None or TopicPartition(t, p) in self.only]
        self._consumer.assign(self.partitions)
        await self._consumer.seek_to_beginning(*self.partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def __aenter__(self) -> LogReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def beginning_offsets(self) -> Offsets:
        return await self._consumer.beginning_offsets(self.partitions)

    async def end_offsets(self) -> Offsets:
        """The log's end now: reading up to here and no further makes a pass finite.

        The development broker answers ListOffsets with the start of the last record batch + 1
        rather than the end, while its fetch responses carry the right high watermark; so a
        probe fetches from the listed offsets and the larger of the two is taken."""
        listed = await self._consumer.end_offsets(self.partitions)
        probe = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, client_id=f"{self.client_id}-probe",
            # Not 0: the development broker leaves a fetch with no wait time unanswered.
            group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10)
        await probe.start()
        try:
            probe.assign(self.partitions)
            for tp, offset in listed.items():
                probe.seek(tp, offset)
            for _ in range(50):
                if all(probe.highwater(tp) is not None for tp in self.partitions):
                    break
                await probe.getmany(timeout_ms=100, max_records=1)
            return {tp: max(listed[tp], probe.highwater(tp) or 0) for tp in self.partitions}
        finally:
            await probe.stop()

    async def committed(self) -> Offsets:
        """Where the reader's group left off, partition by partition (the beginning where it
        never committed)."""
        begins = await self.beginning_offsets()
        out = {}
        for tp in self.partitions:
            offset = await self._consumer.committed(tp)
            out[tp] = begins[tp] if offset is None or offset < begins[tp] else offset
        return out

    async def commit(self, offsets: Offsets) -> None:
        """Record `offsets` as where the reader's group left off."""
        await self._consumer.commit(offsets)

    async def remaining(self, until: Offsets) -> int:
        """Records between the current positions and `until`."""
        total = 0
        for tp in self.partitions:
            total += max(until[tp] - await self._consumer.position(tp), 0)
        return total

    async def seek_to_beginning(self) -> None:
        await self._consumer.seek_to_beginning(*self.partitions)

    def seek(self, offsets: Offsets) -> None:
        """Continue from `offsets` (where another reader of the same partitions stopped)."""
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)

    async def batches(self, until: Offsets) -> AsyncIterator[list[ConsumerRecord]]:
        """Batches of records from the current positions up to (not including) `until`,
        partitions interleaved, each partition in order."""
        consumer = self._consumer
        consumer.resume(*self.partitions)
        while True:
            pending, done = [], []
            for tp in self.partitions:
                (pending if await consumer.position(tp) < until[tp] else done).append(tp)
            # A partition read to its mark is paused, so nothing past it is fetched meanwhile.
            consumer.pause(*done)
            if not pending:
                return
            fetched = await consumer.getmany(*pending, timeout_ms=500,
                                             max_records=self.max_records)
            batch = [record for tp, records in fetched.items() for record in records
                     if record.offset < until[tp]]
            for tp, records in fetched.items():
                if records and records[-1].offset >= until[tp]:
                    # Read past the mark: come back to it, so a later pass starts exactly there.
                    consumer.seek(tp, until[tp])
            if batch:
                yield batch
