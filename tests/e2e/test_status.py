"""`evalstream status` against the running services: lag and dead letters as Kafka has them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _status(settings, as_json: bool = True):
    """`evalstream status`: its JSON report, or (as_json=False) the table it prints."""
    return await _cli(settings, "status", as_json=as_json)


async def _cli(settings, *args: str, as_json: bool = True):
    """An `evalstream` command: its JSON output, or (as_json=False) what it prints."""
    out = await evalstream_command(settings_env(settings), *args, *(["--json"] if as_json else []),
                                   timeout=60)
    return json.loads(out.strip().splitlines()[-1]) if as_json else out


async def test_status_shows_the_groups_catching_up_and_counts_dead_letters(api, migrated):
    before = await _status(migrated)
    assert [g["service"] for g in before["groups"]] == ["evaluator", "projections"]
    evaluator_topics = [t["topic"] for t in before["groups"][0]["topics"]]
    assert evaluator_topics == [migrated.topics.traces, migrated.topics.score_requests]

    # Traces posted: once they are scored, both groups have committed past all of them.
    dataset_id = await api.dataset_with_items([{"id": "s1", "expected_output": "Paris"}])
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
    await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                            "dataset_item_id": "s1", "output": "Paris",
                            "status": "succeeded"} for n in range(3)])
    # ... and a record no consumer can decode, which both dead-letter.
    producer = AIOKafkaProducer(bootstrap_servers=migrated.bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(migrated.topics.traces, b"not an event",
                                            key=uuid.uuid4().hex.encode())
    finally:
        await producer.stop()

    deadline = time.monotonic() + 30
    while True:
        now = await _status(migrated)
        traces = {g["service"]: next(t for t in g["topics"]
                                     if t["topic"] == migrated.topics.traces)
                  for g in now["groups"]}
        caught_up = all(t["lag"] == 0 for t in traces.values())
        if caught_up and now["dead_letters"] >= before["dead_letters"] + 2:
            break
        assert time.monotonic() < deadline, f"never caught up: {now}"
        await asyncio.sleep(0.5)
    before_traces = next(t for t in before["groups"][0]["topics"]
                         if t["topic"] == migrated.topics.traces)
    assert traces["evaluator"]["end"] == before_traces["end"] + 4  # 3 traces, 1 undecodable
    assert traces["evaluator"]["committed"] == traces["evaluator"]["end"]
    assert now["dead_letters"] == before["dead_letters"] + 2  # once per consumer group
    assert now["dead_letters_pending"] == before["dead_letters_pending"] + 2  # not redriven

    table = (await _status(migrated, as_json=False)).splitlines()
    assert table[0].split() == ["service", "group", "topic", "records", "lag"]
    row = next(line.split() for line in table
               if line.startswith("projections") and migrated.topics.traces in line)
    assert row[3:] == [f"{traces['projections']['end']:,}", "0"]
    assert table[-1].startswith("lag: evaluator ") and (
        f"dead letters: {now['dead_letters']:,}, {now['dead_letters_pending']:,} since the "
        "last redrive" in table[-1])

    # The two dead letters of that record, with where it came from and why.
    letters = [d for d in await _cli(migrated, "dead-letters")
               if (d["topic"], d["partition"], d["offset"])
               == (migrated.topics.traces, sent.partition, sent.offset)]
    assert sorted(d["consumer"] for d in letters) == ["evaluator", "projections"]
    assert all(d["reason"].startswith("missing CloudEvents header(s)") and d["ce_id"] is None
               for d in letters)
    summary = await _cli(migrated, "dead-letters", "--limit", "1", as_json=False)
    assert summary.splitlines()[0] == f"{now['dead_letters']:,} dead letter(s) in " \
                                      f"{migrated.topics.dead_letter}"
    assert "evaluator    missing CloudEvents header(s)" in summary
