"""The walking skeleton end to end: HTTP → broker → evaluator → broker → projections → HTTP,
all real processes, a real broker and a real Postgres."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.catalog import RunStarted
from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import wrap
from schemas.traces import TraceCompleted

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

CAPITALS = [
    {"id": None, "input": {"q": "Capital of France?"}, "expected_output": "Paris"},
    {"id": None, "input": {"q": "Capital of Germany?"}, "expected_output": "Berlin"},
    {"id": None, "input": {"q": "Capital of Italy?"}, "expected_output": "Rome"},
    {"id": None, "input": {"q": "Capital of Spain?"}, "expected_output": "Madrid"},
]
EVALUATORS = [{"type": "exact_match"}, {"type": "contains", "name": "mentions_city",
                                        "keywords": ["paris", "berlin"]}]


def _items(prefix: str) -> list[dict]:
    return [{**item, "id": f"{prefix}-{n}"} for n, item in enumerate(CAPITALS)]


async def _run(api, evaluators=EVALUATORS) -> tuple[str, str, list[dict]]:
    prefix = uuid.uuid4().hex[:8]
    items = _items(prefix)
    dataset_id = await api.dataset_with_items(items, evaluators)
    run = await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "baseline"})
    return dataset_id, run["id"], items


async def _post_outputs(api, run_id: str, items: list[dict], outputs: list) -> None:
    """One succeeded trace per item of the run, with these outputs."""
    await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                            "dataset_item_id": item["id"], "output": out, "status": "succeeded"}
                           for n, (item, out) in enumerate(zip(items, outputs, strict=True))])


async def test_traces_are_scored_and_summarised(api):
    dataset_id, run_id, items = await _run(api)
    outputs = ["Paris", "  Berlin ", "Milan", None]  # exact, trimmed, wrong, failed
    traces = [{"trace_id": f"{run_id}-{n}", "run_id": run_id, "dataset_item_id": item["id"],
               "output": out, "status": "succeeded" if out else "failed",
               "error": None if out else "timeout", "latency_ms": 100.0 * (n + 1),
               "usage": {"input_tokens": 10, "output_tokens": 5}, "cost": 0.25}
              for n, (item, out) in enumerate(zip(items, outputs, strict=True))]
    await api.post_traces(traces)

    summary = await api.eventually(
        f"/v1/runs/{run_id}",
        lambda s: s["completed_items"] == 3 and s["scores"].get("exact_match", {}).get("count") == 3
        and s["scores"].get("mentions_city", {}).get("count") == 3)
    assert summary["dataset_id"] == dataset_id
    assert summary["total_items"] == 4
    assert summary["failed_items"] == 1
    assert summary["items_with_scores"] == 3
    assert summary["items_without_scores"] == 1
    assert summary["total_cost"] == pytest.approx(1.0)
    assert summary["total_tokens"] == 60
    assert summary["scores"]["exact_match"] == {"average": pytest.approx(2 / 3),
                                                "pass_rate": pytest.approx(2 / 3), "count": 3}
    # "paris"/"berlin" keywords: Paris 1/2, Berlin 1/2, Milan 0/2
    assert summary["scores"]["mentions_city"]["average"] == pytest.approx(1 / 3)
    assert summary["scores"]["mentions_city"]["pass_rate"] == pytest.approx(2 / 3)
    assert summary["pass_rate"] == pytest.approx(4 / 6)

    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    by_item = {r["dataset_item_id"]: r for r in results}
    first = by_item[items[0]["id"]]
    assert first["input"] == {"q": "Capital of France?"}
    assert first["expected_output"] == "Paris"
    assert first["trace_id"] == f"{run_id}-0"
    exact = next(s for s in first["scores"] if s["name"] == "exact_match")
    assert exact["value"] == 1.0 and exact["passed"] is True
    assert exact["display_value"] == "Pass" and exact["data_type"] == "boolean"
    assert exact["source"] == "programmatic" and exact["evaluator"] == "exact_match"
    assert exact["evaluator_version"] == "1"
    failed = by_item[items[3]["id"]]
    assert failed["status"] == "failed" and failed["scores"] == []


async def test_same_trace_twice_changes_nothing(api):
    _, run_id, items = await _run(api)
    trace = {"trace_id": f"{run_id}-dup", "run_id": run_id, "dataset_item_id": items[0]["id"],
             "output": "Paris", "status": "succeeded", "cost": 1.0}
    await api.post_traces([trace])
    first = await api.eventually(f"/v1/runs/{run_id}",
                                 lambda s: s["scores"].get("mentions_city", {}).get("count") == 1)
    await api.post_traces([trace])
    await api.post_traces([trace, trace])
    # A later, different trace in the same run proves the duplicates have been consumed.
    await api.post_traces([{**trace, "trace_id": f"{run_id}-other",
                            "dataset_item_id": items[1]["id"], "output": "Berlin"}])
    second = await api.eventually(f"/v1/runs/{run_id}", lambda s: s["completed_items"] == 2)
    second = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("mentions_city", {}).get("count") == 2)
    assert second["total_cost"] == pytest.approx(2.0)
    assert second["scores"]["exact_match"]["count"] == 2
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    dup = next(r for r in results if r["trace_id"] == f"{run_id}-dup")
    assert sorted(s["name"] for s in dup["scores"]) == ["exact_match", "mentions_city"]
    assert first["scores"]["exact_match"]["average"] == 1.0


async def test_projections_restart_mid_stream_loses_and_doubles_nothing(api, services):
    prefix = uuid.uuid4().hex[:8]
    n_items = 600
    items = [{"id": f"{prefix}-{i}", "input": i, "expected_output": str(i)}
             for i in range(n_items)]
    dataset_id = await api.dataset_with_items(items, [{"type": "exact_match"}])
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "r"}))["id"]
    traces = [{"trace_id": f"{prefix}-t{i}", "run_id": run_id, "dataset_item_id": f"{prefix}-{i}",
               "output": str(i) if i % 3 else "wrong", "status": "succeeded", "cost": 0.5}
              for i in range(n_items)]
    for start in range(0, n_items, 100):
        await api.post_traces(traces[start:start + 100])
        if start == 200:
            services.stop("projections", sig=9)  # killed hard, mid-batch if it can be
        if start == 400:
            services.start("projections")
    # Traces and scores arrive on two topics, in either order: both awaited.
    summary = await api.eventually(
        f"/v1/runs/{run_id}",
        lambda s: s["scores"].get("exact_match", {}).get("count") == n_items
        and s["completed_items"] == n_items, timeout=60)
    assert summary["total_cost"] == pytest.approx(0.5 * n_items)
    assert summary["scores"]["exact_match"]["average"] == pytest.approx(
        sum(1 for i in range(n_items) if i % 3) / n_items)


async def test_bad_requests_name_the_field_and_publish_nothing(api):
    _, run_id, items = await _run(api)
    r = await api.ingest.post("/v1/traces", json={"traces": [
        {"trace_id": "ok", "run_id": run_id, "dataset_item_id": items[0]["id"], "output": "Paris",
         "status": "succeeded"},
        {"trace_id": "bad", "run_id": "no-such-run", "output": "x", "status": "succeeded"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 1, "run_id"]
    r = await api.ingest.post("/v1/traces", json={"traces": [
        {"trace_id": "x", "output": "x", "status": "done"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 0, "status"]
    r = await api.ingest.post("/v1/traces", json={"traces": [
        {"trace_id": f"x{i}", "output": "x", "status": "succeeded"} for i in range(1001)]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "traces"]
    r = await api.ingest.post("/v1/datasets", json={
        "name": "d", "evaluators": [{"type": "contains", "keywords": "paris"}]})
    assert r.status_code == 422 and "keywords" in json.dumps(r.json()["detail"])
    r = await api.ingest.post("/v1/datasets", json={"name": "d",
                                                    "evaluators": [{"type": "nope"}]})
    assert r.status_code == 422 and "type" in json.dumps(r.json()["detail"])
    r = await api.ingest.post("/v1/runs", json={"dataset_id": "x", "name": "r", "evaluators": [
        {"type": "regex", "pattern": "(?<=no)lookbehind"}]})
    assert r.status_code == 422
    assert "pattern: is not a valid RE2 pattern" in r.json()["detail"][0]["msg"]
    r = await api.ingest.post("/v1/traces", content=b"x" * (17 * 1024 * 1024),
                              headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = await api.ingest.post("/v1/traces", json={"traces": []},
                              headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    # The valid first trace of the refused request was not published.
    await asyncio.sleep(1)
    summary = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert summary["completed_items"] == 0


async def test_malformed_events_go_to_dead_letter_and_consumers_carry_on(api, migrated):
    settings = migrated
    _, run_id, items = await _run(api)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        marker = uuid.uuid4().hex
        await producer.send_and_wait(settings.topics.traces, b"{not json",
                                     headers=[("ce_id", marker.encode()),
                                              ("ce_type", b"evalstream.TraceCompleted.v1"),
                                              ("ce_source", b"test"),
                                              ("ce_specversion", b"1.0")])
        await producer.send_and_wait(settings.topics.scores, b'{"a": 1}',
                                     headers=[("ce_id", (marker + "2").encode())])
        # A trace published by any Kafka client from the documented schema, with one evaluator
        # that cannot run: it fails alone, the other evaluator still scores.
        event = TraceCompleted(
            trace_id=f"{run_id}-kcat", run_id=run_id, dataset_item_id=items[0]["id"],
            output="Paris", expected_output="Paris", status="succeeded", completed_at=utcnow(),
            evaluators=(EvaluatorSpec(type="exact_match"), EvaluatorSpec(type="no_such_type")))
        env = wrap(event, source="test", key=run_id)
        await producer.send_and_wait(settings.topics.traces, env.body(), key=run_id.encode(),
                                     headers=env.headers())
    finally:
        await producer.stop()

    results = await api.eventually(
        f"/v1/runs/{run_id}/results",
        lambda r: any(i["scores"] and i["evaluation_failures"] for i in r["items"]))
    item = results["items"][0]
    assert [s["name"] for s in item["scores"]] == ["exact_match"]
    assert item["evaluation_failures"][0]["name"] == "no_such_type"
    assert "unknown evaluator type" in item["evaluation_failures"][0]["reason"]

    consumer = AIOKafkaConsumer(settings.topics.dead_letter, bootstrap_servers=settings.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    reasons = {}
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(reasons) < 3 and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    h = dict(rec.headers)
                    if h.get("ce_id", b"").decode().startswith(marker):
                        reasons[(h["ce_id"].decode(), h["dlq_consumer"].decode())] = (
                            h["dlq_reason"].decode())
    finally:
        await consumer.stop()
    # The evaluator refuses the bad trace, the projections refuse both bad records.
    assert "invalid TraceCompleted" in reasons[(marker, "evaluator")]
    assert "invalid TraceCompleted" in reasons[(marker, "projections")]
    assert "missing CloudEvents header" in reasons[(marker + "2", "projections")]


async def test_item_ids_are_per_dataset(api):
    """Teams reuse ids like `q1` in every dataset; each run scores against its own dataset."""
    item_id = f"q-{uuid.uuid4().hex[:6]}"
    ds_a = await api.dataset_with_items([{"id": item_id, "expected_output": "Paris"}])
    ds_b = await api.dataset_with_items([{"id": item_id, "expected_output": "Berlin"}])
    run_a = (await api.create("/v1/runs", {"dataset_id": ds_a, "name": "a"}))["id"]
    run_b = (await api.create("/v1/runs", {"dataset_id": ds_b, "name": "b"}))["id"]
    await api.post_traces([
        {"trace_id": f"{run_a}-1", "run_id": run_a, "dataset_item_id": item_id,
         "output": "Paris", "status": "succeeded"},
        {"trace_id": f"{run_b}-1", "run_id": run_b, "dataset_item_id": item_id,
         "output": "Paris", "status": "succeeded"}])
    a = await api.eventually(f"/v1/runs/{run_a}", lambda s: "exact_match" in s["scores"])
    b = await api.eventually(f"/v1/runs/{run_b}", lambda s: "exact_match" in s["scores"])
    assert a["scores"]["exact_match"]["average"] == 1.0
    assert b["scores"]["exact_match"]["average"] == 0.0
    # Without a run the id no longer names one item.
    r = await api.ingest.post("/v1/traces", json={"traces": [
        {"trace_id": "x", "dataset_item_id": item_id, "output": "Paris", "status": "succeeded"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 0, "dataset_item_id"]
    assert "several datasets" in r.json()["detail"][0]["msg"]


async def _dead_letters(settings, ce_ids: set[str], want: int) -> dict:
    """(ce_id, consumer) -> reason, for the dead letters of these events."""
    consumer = AIOKafkaConsumer(settings.topics.dead_letter, bootstrap_servers=settings.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: dict = {}
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(found) < want and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    h = dict(rec.headers)
                    if (ce_id := h.get("ce_id", b"").decode()) in ce_ids:
                        found[(ce_id, h["dlq_consumer"].decode())] = h["dlq_reason"].decode()
    finally:
        await consumer.stop()
    return found


async def _produce(settings, topic: str, envelopes: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=50)
    await producer.start()
    try:
        futures = [await producer.send(topic, env.body(), key=env.key.encode(),
                                       headers=env.headers()) for env in envelopes]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_a_value_postgres_cannot_store_is_refused_or_dead_lettered(api, migrated):
    """U+0000 is valid JSON but no Postgres text: ingest refuses it naming the field, and sent
    straight to Kafka it is dead-lettered by every consumer alike."""
    settings = migrated
    _, run_id, items = await _run(api)
    r = await api.ingest.post("/v1/traces", json={"traces": [
        {"trace_id": "nul", "run_id": run_id, "dataset_item_id": items[0]["id"],
         "output": {"text": ["ok", "a\x00b"]}, "status": "succeeded"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "traces", 0, "output"]
    assert "U+0000" in r.json()["detail"][0]["msg"] and "text.1" in r.json()["detail"][0]["msg"]

    def trace(n: int, output: str) -> TraceCompleted:
        return TraceCompleted(
            trace_id=f"{run_id}-{n}", run_id=run_id, dataset_item_id=items[n]["id"],
            output=output, expected_output=output.replace("\x00", ""), status="succeeded",
            completed_at=utcnow(), evaluators=(EvaluatorSpec(type="exact_match"),))

    envs = [wrap(trace(0, "Par\x00is"), source="test", key=run_id),
            wrap(trace(1, "Berlin"), source="test", key=run_id)]
    await _produce(settings, settings.topics.traces, envs)
    results = await api.eventually(
        f"/v1/runs/{run_id}/results",
        lambda r: any(i["trace_id"] == f"{run_id}-1" and i["scores"] for i in r["items"]))
    assert [i["trace_id"] for i in results["items"]] == [f"{run_id}-1"]
    summary = (await api.query.get(f"/v1/runs/{run_id}")).json()
    assert summary["scores"]["exact_match"]["count"] == 1  # nothing scored the refused trace
    reasons = await _dead_letters(settings, {envs[0].id}, 2)
    assert set(reasons) == {(envs[0].id, "evaluator"), (envs[0].id, "projections")}
    assert all("U+0000" in reason for reason in reasons.values())


async def test_an_event_the_read_model_refuses_is_dead_lettered_alone(api, migrated):
    """A valid event that Postgres still refuses (here a count beyond its integer) goes to the
    dead-letter topic; the rest of its batch is applied and the partition keeps moving."""
    settings = migrated
    dataset_id = await api.dataset_with_items([{"id": "x", "expected_output": "x"}])
    too_big = RunStarted(run_id=f"big-{uuid.uuid4().hex[:8]}", dataset_id=dataset_id, name="big",
                         evaluators=(EvaluatorSpec(type="exact_match"),), total_items=10**12,
                         started_at=utcnow())
    fine = RunStarted(run_id=f"ok-{uuid.uuid4().hex[:8]}", dataset_id=dataset_id, name="ok",
                      evaluators=(EvaluatorSpec(type="exact_match"),), total_items=1,
                      started_at=utcnow())
    envs = [wrap(e, source="test", key=dataset_id) for e in (too_big, fine)]
    await _produce(settings, settings.topics.catalog, envs)
    await api.eventually(f"/v1/runs/{fine.run_id}", lambda s: s["total_items"] == 1)
    assert (await api.query.get(f"/v1/runs/{too_big.run_id}")).status_code == 404
    reasons = await _dead_letters(settings, {envs[0].id}, 1)
    assert "refused by the read model" in reasons[(envs[0].id, "projections")]


async def test_an_llm_judge_scores_beside_the_programmatic_evaluators(api, fake_judge):
    """A dataset with exact match and two LLM-judge specs, against the session's judge (a real
    HTTP server speaking OpenAI's chat completions, tests/fake_judge.py): the judge's verdicts and
    reasons land in the read model as `llm_judge` scores, and a judge that keeps failing becomes
    an evaluation failure with its reason while the other scores of the case stand."""
    evaluators = [{"type": "exact_match"},
                  {"type": "llm_judge", "name": "judged_correct",
                   "criteria": "Does the answer name the expected city?"},
                  {"type": "llm_judge", "name": "judged_broken", "model": "broken",
                   "criteria": "Is it polite?"}]
    _, run_id, items = await _run(api, evaluators)
    outputs = ["The capital is Paris.", "Munich", "Rome", "Madrid"]
    await _post_outputs(api, run_id, items, outputs)

    summary = await api.eventually(
        f"/v1/runs/{run_id}",
        lambda s: s["scores"].get("judged_correct", {}).get("count") == 4
        and s["evaluation_failures"] == 4)
    # Contains the expected city: Paris (in a sentence), Rome, Madrid; not Munich for Berlin.
    assert summary["scores"]["judged_correct"]["average"] == pytest.approx(3 / 4)
    assert summary["scores"]["exact_match"]["average"] == pytest.approx(2 / 4)
    assert "judged_broken" not in summary["scores"]
    # What judging cost: the tokens of the four answered calls (the judge reports 50 in, 12 out
    # a call; the failed ones report none).
    assert (summary["evaluation_input_tokens"], summary["evaluation_output_tokens"]) == (
        4 * 50, 4 * 12)

    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    first = next(r for r in results if r["dataset_item_id"] == items[0]["id"])
    judged = next(s for s in first["scores"] if s["name"] == "judged_correct")
    assert (judged["value"], judged["source"], judged["evaluator"]) == (1.0, "llm_judge",
                                                                        "llm_judge")
    assert judged["comment"] == "The output contains 'paris'."
    # The settings' default model, as the judge named it in its reply.
    assert judged["evaluator_version"] == f"1+{fake_judge.answering('gpt-4o-mini')}"
    failure = next(f for f in first["evaluation_failures"] if f["name"] == "judged_broken")
    assert "500" in failure["reason"] and "JudgeHTTPError" in failure["reason"]
    asked = [r for r in fake_judge.requests
             if "Does the answer name" in r["messages"][1]["content"]]
    assert len(asked) == 4 and all(r["temperature"] == 0 for r in asked)


async def test_regex_and_similarity_scores(api):
    evaluators = [{"type": "regex", "name": "names_a_city", "pattern": r"\b(paris|berlin)\b",
                   "ignore_case": True},
                  {"type": "similarity"}, {"type": "similarity", "name": "found", "partial": True},
                  {"type": "similarity", "name": "close", "pass_threshold": 0.9}]
    _, run_id, items = await _run(api, evaluators)
    outputs = ["Paris", "It is Berlin.", "Milano", "Madrid"]
    await _post_outputs(api, run_id, items, outputs)
    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("found", {}).get("count") == 4)
    assert summary["scores"]["names_a_city"]["average"] == 0.5
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    by_output = {r["output"]: {s["name"]: s["value"] for s in r["scores"]} for r in results}
    assert by_output["Paris"] == {"names_a_city": 1.0, "similarity": 1.0, "found": 1.0,
                                  "close": 1.0}
    assert by_output["It is Berlin."]["found"] == 1.0
    assert 0 < by_output["It is Berlin."]["similarity"] < 1
    assert by_output["Milano"]["names_a_city"] == 0.0
    # Similar to the expected output: 1, 12/19 ("It is Berlin." to "Berlin"), below 0.5
    # ("Milano" to "Rome"), 1. At 0.9 the second fails too.
    close = {r["output"]: next(s for s in r["scores"] if s["name"] == "close") for r in results}
    assert [close[o]["passed"] for o in outputs] == [True, False, False, True]
    assert close["Paris"]["pass_threshold"] == 0.9 and close["It is Berlin."]["value"] >= 0.5
    assert summary["scores"]["close"]["pass_rate"] == 0.5  # at 0.5 it would be 0.75
    assert summary["scores"]["similarity"]["pass_rate"] == 0.75


async def test_json_schema_scores(api):
    schema = {"type": "object", "required": ["city"],
              "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]+$"}}}
    _, run_id, items = await _run(api, [{"type": "json_schema", "name": "shaped",
                                         "schema": schema}])
    outputs = ['{"city": "Paris"}', {"city": "berlin"}, "```json\n{\"city\": \"Rome\"}\n```",
               "Madrid"]
    await _post_outputs(api, run_id, items, outputs)
    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("shaped", {}).get("count") == 4)
    assert summary["scores"]["shaped"]["pass_rate"] == 0.5
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    shaped = {r["dataset_item_id"]: next(s for s in r["scores"] if s["name"] == "shaped")
              for r in results}
    assert [shaped[i["id"]]["value"] for i in items] == [1.0, 0.0, 1.0, 0.0]
    assert shaped[items[1]["id"]]["comment"] == "$.city: 'berlin' does not match '^[A-Z][a-z]+$'"
    assert shaped[items[3]["id"]]["comment"] == "$: 'Madrid' is not of type 'object'"

    # A schema that is not one is refused where it is given, naming the field.
    r = await api.ingest.post(f"/v1/runs/{run_id}/evaluate", json={"evaluators": [
        {"type": "json_schema", "schema": {"type": "objekt"}}]})
    assert r.status_code == 422
    assert "schema: is not a valid JSON Schema" in r.json()["detail"][0]["msg"]


async def test_numeric_scores(api):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": {"q": q}, "expected_output": expected}
             for n, (q, expected) in enumerate([("12 * 12?", 144), ("Pi to 2 places?", "3.14"),
                                                ("Population of Paris?", 2_100_000)])]
    dataset_id = await api.dataset_with_items(items, [
        {"type": "numeric", "name": "right", "relative_tolerance": 0.05}])
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "math"}))["id"]
    outputs = ["12 * 12 = 144.", "about 3.1416", "Paris has 2,145,906 inhabitants (2021)."]
    await _post_outputs(api, run_id, items, outputs)
    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("right", {}).get("count") == 3)
    results = (await api.query.get(f"/v1/runs/{run_id}/results")).json()["items"]
    right = {r["dataset_item_id"]: next(s for s in r["scores"] if s["name"] == "right")
             for r in results}
    # The last number of the third output is the year: not the population.
    assert [right[i["id"]]["value"] for i in items] == [1.0, 1.0, 0.0]
    assert right[items[2]["id"]]["comment"] == "2021 is not 2.1e+06 ± 105000"
    assert summary["scores"]["right"]["pass_rate"] == pytest.approx(2 / 3)


async def test_results_export_as_csv(api):
    _, run_id, items = await _run(api)
    outputs = ["Paris", "Berlin, the capital", "Milan", None]
    await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                            "dataset_item_id": item["id"], "output": out,
                            "status": "succeeded" if out else "failed",
                            "error": None if out else "timeout", "cost": 0.5}
                           for n, (item, out) in enumerate(zip(items, outputs, strict=True))])
    await api.create("/v1/scores", {"run_id": run_id, "dataset_item_id": items[0]["id"],
                                    "name": "tone", "data_type": "categorical",
                                    "value": "terse, but right"}, status=202)
    await api.eventually(f"/v1/runs/{run_id}",
                         lambda s: s["scores"].get("exact_match", {}).get("count") == 3
                         and s["scores"].get("tone", {}).get("count") == 1)

    r = await api.query.get(f"/v1/runs/{run_id}/results.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="run-{run_id}-results.csv"' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0])[-4:] == ["exact_match", "mentions_city", "tone", "evaluation_failures"]
    by_item = {row["dataset_item_id"]: row for row in rows}
    assert len(rows) == 4
    first = by_item[items[0]["id"]]
    assert (first["output"], first["exact_match"], first["mentions_city"], first["tone"]) == (
        "Paris", "1", "0.5", "terse, but right")  # a comma inside a cell, quoted
    assert json.loads(first["input"]) == items[0]["input"]
    failed = by_item[items[3]["id"]]
    assert (failed["status"], failed["error"], failed["exact_match"]) == ("failed", "timeout", "")
    assert first["trace_url"].endswith(f"{run_id}-0")

    failing = (await api.query.get(f"/v1/runs/{run_id}/results.csv", params={
        "filter": "failed", "score": "exact_match", "sort": "score:exact_match"})).text
    assert [row["output"] for row in csv.DictReader(io.StringIO(failing))] == [
        "Berlin, the capital", "Milan"]  # exact matches that missed, as /results filters them
    assert (await api.query.get("/v1/runs/nope/results.csv")).status_code == 404
    r = await api.query.get(f"/v1/runs/{run_id}/results.csv", params={"sort": "colour"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "sort"]
