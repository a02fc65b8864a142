"""How a consumer splits a batch into lanes and handles them (the handler logic alone; the e2e
suite runs it against the real broker and Postgres)."""

from __future__ import annotations

import asyncio
from collections import namedtuple

import pytest

from services.messaging import in_lanes, lanes

Record = namedtuple("Record", "topic partition offset")


def _batch() -> list[Record]:
    # Interleaved as a fetch returns them: 3 partitions of traces (5, 3 and 1 records) and one
    # of the catalog.
    sizes = {("traces", 0): 5, ("traces", 1): 3, ("traces", 2): 1, ("catalog", 0): 2}
    out, taken = [], dict.fromkeys(sizes, 0)
    while any(taken[k] < n for k, n in sizes.items()):
        for (topic, partition), n in sizes.items():
            if taken[(topic, partition)] < n:
                out.append(Record(topic, partition, taken[(topic, partition)]))
                taken[(topic, partition)] += 1
    return out


def test_each_partition_is_whole_and_in_order_in_one_lane():
    batch = _batch()
    split = lanes(batch, 2)
    assert sorted(r for lane in split for r in lane) == sorted(batch)
    owner = {}
    for n, lane in enumerate(split):
        for record in lane:
            assert owner.setdefault((record.topic, record.partition), n) == n
        for key in {(r.topic, r.partition) for r in lane}:
            offsets = [r.offset for r in lane if (r.topic, r.partition) == key]
            assert offsets == sorted(offsets)
    # Balanced by records: 5 | 3 + 2 + 1.
    assert sorted(len(lane) for lane in split) == [5, 6]


def test_no_empty_lanes_and_one_lane_is_the_batch():
    batch = _batch()
    [only] = lanes(batch, 1)
    assert sorted(only) == sorted(batch)
    assert len(lanes(batch, 8)) == 4  # no more lanes than partitions
    assert lanes([], 2) == []


async def test_the_next_lane_is_decoded_while_the_first_is_applied():
    events: list[str] = []

    async def decode(lane):
        await asyncio.sleep(0)  # decode_records gives the loop a turn every few records
        events.append(f"decode {len(lane)}")
        return list(lane)

    async def apply_lane(lane, envelopes):
        events.append(f"apply start {len(lane)}")
        await asyncio.sleep(0.01)
        events.append(f"apply end {len(lane)}")

    await in_lanes(_batch(), 2, decode, apply_lane)
    # The second lane was decoded while the first was being applied, and both were applied.
    first, second = (e.split()[-1] for e in events if e.startswith("decode"))
    assert (events.index(f"apply start {first}") < events.index(f"decode {second}")
            < events.index(f"apply end {first}"))
    assert sorted(e for e in events if e.startswith("apply end")) == ["apply end 5",
                                                                      "apply end 6"]


async def test_a_failing_lane_cancels_the_others_and_raises():
    cancelled = []

    async def decode(lane):
        return list(lane)

    async def apply_lane(lane, envelopes):
        if len(lane) == 6:
            await asyncio.sleep(0.01)
            raise ConnectionError("Postgres went away")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(len(lane))
            raise

    with pytest.raises(ConnectionError, match="went away"):
        await asyncio.wait_for(in_lanes(_batch(), 2, decode, apply_lane), 5)
    assert cancelled == [5]
