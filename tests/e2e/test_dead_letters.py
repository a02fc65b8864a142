"""`evalstream dead-letters redrive` against the running services: a dead letter sent back after
its cause is fixed is taken, once, by the service that had given up on it and by no other, and
one that is still refused comes back as a dead letter."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import wrap
from schemas.traces import TraceCompleted
from tests.conftest import evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _cli(settings, *args: str):
    out = await evalstream_command(settings_env(settings), *args, timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def _dlq_headers(topic: str, offset: int, consumer: str, reason: str) -> list:
    return [("dlq_reason", reason.encode()), ("dlq_topic", topic.encode()),
            ("dlq_partition", b"0"), ("dlq_offset", str(offset).encode()),
            ("dlq_consumer", consumer.encode())]


async def test_redrive_sends_dead_letters_back_once_and_the_refused_return(api, migrated):
    dataset_id = await api.dataset_with_items([{"id": "d1", "expected_output": "Paris"},
                                               {"id": "d2", "expected_output": "Rome"}])
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
    # A trace that an earlier consumer refused, as both groups dead-lettered it (an evaluator
    # and a projections version that did not know the event, say): two dead letters, one record.
    trace = TraceCompleted(trace_id=f"{run_id}-t", run_id=run_id, dataset_id=dataset_id,
                           dataset_item_id="d1", output="Paris", expected_output="Paris",
                           status="succeeded", evaluators=(EvaluatorSpec(type="exact_match"),),
                           completed_at=utcnow())
    env = wrap(trace, source="test", key=trace.run_item_id)
    traces = migrated.topics.traces
    at = random.randrange(10**9, 2 * 10**9)  # where the refused records were (made up, unique)
    letters = [
        (env.key.encode(), env.body(), env.headers() + _dlq_headers(
            traces, at, consumer, f"unknown event type: {consumer} of an earlier version"))
        for consumer in ("evaluator", "projections", "projections")]  # the last: a repeat
    # ... a trace only the projections refused (the read model, say): the evaluator had scored
    # it, and must not score it again (an LLM judge's call costs money) ...
    only = TraceCompleted(trace_id=f"{run_id}-only", run_id=run_id, dataset_id=dataset_id,
                          dataset_item_id="d2", output="Rome", expected_output="Rome",
                          status="succeeded", evaluators=(EvaluatorSpec(type="exact_match"),),
                          completed_at=utcnow())
    only_env = wrap(only, source="test", key=only.run_item_id)
    letters.append((only_env.key.encode(), only_env.body(), only_env.headers() + _dlq_headers(
        traces, at + 2, "projections", "refused by the read model: a made-up reason")))
    # ... a record that is still not an event (both services gave up on it), and one whose
    # topic is not evalstream's.
    letters += [(b"k" + uuid.uuid4().hex.encode(), b"still not an event",
                 _dlq_headers(traces, at + 1, consumer, "missing CloudEvents header(s)"))
                for consumer in ("evaluator", "projections")]
    letters.append((None, b"{}", _dlq_headers("somewhere.else", 7, "evaluator", "?")))
    producer = AIOKafkaProducer(bootstrap_servers=migrated.bootstrap)
    await producer.start()
    try:
        for key, value, headers in letters:
            await producer.send_and_wait(migrated.topics.dead_letter, value, key=key,
                                         headers=headers)
    finally:
        await producer.stop()
    ours = [traces, 0, at], [traces, 0, at + 1], [traces, 0, at + 2]

    preview = await _cli(migrated, "dead-letters", "redrive", "--dry-run", "--json")
    assert preview["dry_run"] and all(o in preview["origins"] for o in ours)
    assert preview["duplicates"] >= 1 and preview["unroutable"] >= 1

    # The dry run sent and remembered nothing: the redrive finds the same records.
    report = await _cli(migrated, "dead-letters", "redrive", "--json")
    assert not report["dry_run"]
    assert sorted(o for o in report["origins"] if o in ours) == sorted(ours)  # each once
    # Back once per service that gave up on it: 2 + 1 + 2; the repeated letter is not sent.
    assert report["redriven"][traces] >= 5 and report["duplicates"] >= 1

    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("exact_match", {}).get("count") == 1)
    assert summary["scores"]["exact_match"]["average"] == 1.0
    results = await api.eventually(f"/v1/runs/{run_id}/results",
                                   lambda r: len(r["items"]) == 2)
    assert [r["trace_id"] for r in results["items"]] == [trace.trace_id, only.trace_id]
    # The evaluator skipped the trace sent back for the projections: once both groups have
    # committed past everything (the evaluator publishes a batch's scores before committing
    # it), d2 has no score.
    for _ in range(200):
        status = await _cli(migrated, "status", "--json")
        if all(g["lag"] == 0 for g in status["groups"]):
            break
    assert all(g["lag"] == 0 for g in status["groups"]), status
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    assert [(r["dataset_item_id"], [s["name"] for s in r["scores"]]) for r in results] == [
        ("d1", ["exact_match"]), ("d2", [])]

    # The record still refused is a dead letter again, once per group, saying where it was.
    def returned(letters: list[dict]) -> list[dict]:
        return [d for d in letters if d["redriven_from"] and d["topic"] == traces
                and d["reason"].startswith("missing CloudEvents header(s)")
                and d["offset"] not in (at, at + 1)]

    for _ in range(100):
        back = returned(await _cli(migrated, "dead-letters", "--json"))
        if len({d["consumer"] for d in back}) == 2:
            break
    assert sorted({d["consumer"] for d in back}) == ["evaluator", "projections"]

    # `status` counts the dead letters since this redrive apart from all of them.
    status = await _cli(migrated, "status", "--json")
    assert status["dead_letters_pending"] < status["dead_letters"]

    # A second redrive does not send the taken record again.
    again = await _cli(migrated, "dead-letters", "redrive", "--json")
    assert [traces, 0, at] not in again["origins"]
    assert [traces, 0, at + 1] not in again["origins"]
