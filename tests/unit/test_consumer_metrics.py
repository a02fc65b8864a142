"""The consumer metrics of a batch (services/metrics.py): records counted per topic, the batch
per outcome, and each partition's lag after it from the consumer's high watermark."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services import metrics


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _records(topic: str, partition: int, offsets: range) -> list:
    return [SimpleNamespace(topic=topic, partition=partition, offset=o) for o in offsets]


class _Consumer:
    def __init__(self, highwater: dict[TopicPartition, int]):
        self._highwater = highwater

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater.get(tp)


def test_a_batch_counts_its_records_and_leaves_each_partitions_lag():
    records = _records("m.traces", 0, range(10, 13)) + _records("m.traces", 3, range(5, 6)) + \
        _records("m.scores", 1, range(0, 2))
    consumer = _Consumer({TopicPartition("m.traces", 0): 20, TopicPartition("m.traces", 3): 6})
    before = _sample("evalstream_consumed_records_total", service="unit", topic="m.traces") or 0
    with metrics.consumed_batch("unit", records, consumer):
        pass
    assert _sample("evalstream_consumed_records_total", service="unit",
                   topic="m.traces") == before + 4
    assert _sample("evalstream_consumed_records_total", service="unit", topic="m.scores") >= 2
    # 20 - 13 records wait on partition 0; partition 3 is read to its end; the consumer knows
    # no high watermark of m.scores/1 yet, so it has no lag sample
    assert _sample("evalstream_consumer_lag", service="unit", topic="m.traces",
                   partition="0") == 7
    assert _sample("evalstream_consumer_lag", service="unit", topic="m.traces",
                   partition="3") == 0
    assert _sample("evalstream_consumer_lag", service="unit", topic="m.scores",
                   partition="1") is None
    assert _sample("evalstream_batches_total", service="unit", outcome="ok") >= 1
    assert _sample("evalstream_last_batch_timestamp_seconds", service="unit") > 0


def test_a_failed_batch_is_counted_as_failed_and_its_records_not_as_consumed():
    records = _records("m.fail", 0, range(3))
    with pytest.raises(RuntimeError), metrics.consumed_batch("unit-f", records, None):
        raise RuntimeError("Postgres went away")
    assert _sample("evalstream_batches_total", service="unit-f", outcome="failed") == 1
    assert _sample("evalstream_batches_total", service="unit-f", outcome="ok") in (None, 0)
    assert _sample("evalstream_consumed_records_total", service="unit-f", topic="m.fail") is None
