"""How a parallel rebuild deals partitions to its workers."""

from __future__ import annotations

from aiokafka import TopicPartition

from services.projections.rebuild import _shares


def test_every_partition_goes_to_exactly_one_worker_and_each_gets_part_of_every_topic():
    partitions = [TopicPartition(t, p) for t in ("catalog", "scores", "traces") for p in range(8)]
    shares = _shares(reversed(partitions), 3)
    assert sorted(tp for share in shares for tp in share) == sorted(partitions)
    assert len(shares) == 3
    assert all({tp.topic for tp in share} == {"catalog", "scores", "traces"} for share in shares)
    assert [len(share) for share in shares] == [8, 8, 8]


def test_no_worker_is_left_without_partitions():
    assert _shares([TopicPartition("traces", 0)], 4) == [[TopicPartition("traces", 0)]]
