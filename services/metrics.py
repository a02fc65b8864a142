"""Prometheus metrics: what an operator alerts on and graphs. `GET /metrics` on the ingest and
query APIs (the query API's process also runs the projection consumers); the evaluator, which
has no HTTP API, serves them on `EVALSTREAM_METRICS_PORT` when it is set.

Everything is counted once per consumed or published batch (a dictionary update per record
finds the batch's topics and partition ends), so the hot path pays next to nothing.
docs/production.md lists the metrics and the alerts to set.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from aiokafka import TopicPartition
from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_fastapi_instrumentator import Instrumentator

from schemas.common import PASS_THRESHOLD

CONSUMED = Counter("evalstream_consumed_records", "Records consumed, by service and topic.",
                   ["service", "topic"])
BATCHES = Counter("evalstream_batches", "Consumed batches handled, by service and outcome "
                  "(ok, or failed: the batch is delivered again).", ["service", "outcome"])
BATCH_SECONDS = Histogram(
    "evalstream_batch_seconds", "Time to handle a consumed batch (decode, score or apply, "
    "publish), by service.", ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
LAG = Gauge("evalstream_consumer_lag", "Records of the partition after the last batch the "
            "service handled from it (the partition's high watermark then, minus the offset "
            "after the batch).", ["service", "topic", "partition"])
LAST_BATCH = Gauge("evalstream_last_batch_timestamp_seconds",
                   "When the service last finished a consumed batch (Unix time).", ["service"])
PUBLISHED = Counter("evalstream_published_records", "Records published, by service and topic "
                    "(dead letters included).", ["service", "topic"])
DEAD_LETTERS = Counter("evalstream_dead_letters", "Records sent to the dead-letter topic, by "
                       "service and the topic they were read from.", ["service", "topic"])
JUDGE_CALLS = Counter("evalstream_judge_calls", "Calls to the LLM judge's endpoint, by the "
                      "model asked and outcome (answered, or failed after its retries).",
                      ["model", "outcome"])
JUDGE_TOKENS = Counter("evalstream_judge_tokens", "Tokens the LLM judge's endpoint reported "
                       "using (its reply's usage), by the model asked and kind (input, "
                       "output): what judging costs.", ["model", "kind"])
PRODUCTION_SCORES = Counter(
    "evalstream_production_scores", "Scores the evaluator published for traces outside runs "
    "(production traffic, scoring rules), by score name and outcome (passed or failed against "
    "the spec's pass_threshold; labelled: a categorical score): production pass rates to alert "
    "on. A run's scores are its summary's (GET /v1/runs/{id}).", ["name", "outcome"])
EVALUATOR_FAILURES = Counter("evalstream_evaluator_failures", "Evaluators that failed on a case "
                             "(it has no score of theirs), by score name and scope (production: "
                             "a trace outside runs; run: a run's trace or a rescoring).",
                             ["name", "scope"])
RETENTION_SWEPT = Counter(
    "evalstream_retention_swept_rows", "Rows about traffic outside runs that retention's sweeps "
    "removed from the read models, by table (docs/adr/0017).", ["table"])
RETENTION_WATERMARK = Gauge(
    "evalstream_retention_watermark_timestamp_seconds", "The read models keep the traffic "
    "outside runs that completed at or after this time (Unix time), as of the last sweep.")
RETRIES = Counter("evalstream_step_retries", "Failed attempts of a batch step that is retried "
                  "with backoff (Postgres or the broker unreachable), by step.", ["step"])


@contextlib.contextmanager
def consumed_batch(service: str, records: Sequence, consumer: object | None) -> Iterator[None]:
    """Count and time the handling of one consumed batch; afterwards, the lag of each partition
    it came from, by the consumer's high watermark (aiokafka's `highwater`, no request)."""
    started = time.perf_counter()
    ends: dict[tuple[str, int], int] = {}
    counts: dict[str, int] = {}
    for record in records:
        ends[record.topic, record.partition] = record.offset + 1
        counts[record.topic] = counts.get(record.topic, 0) + 1
    try:
        yield
    except BaseException:
        BATCHES.labels(service, "failed").inc()
        raise
    BATCHES.labels(service, "ok").inc()
    BATCH_SECONDS.labels(service).observe(time.perf_counter() - started)
    LAST_BATCH.labels(service).set(time.time())
    for topic, n in counts.items():
        CONSUMED.labels(service, topic).inc(n)
    highwater = getattr(consumer, "highwater", None)
    if highwater is None:
        return
    for (topic, partition), end in ends.items():
        high = highwater(TopicPartition(topic, partition))
        if high is not None:
            LAG.labels(service, topic, str(partition)).set(max(high - end, 0))


def scored_cases(cases: Sequence) -> None:
    """Count a published batch's CaseScored: production traces' scores by name and outcome, and
    every evaluator failure. A run's case costs one comparison (its scores are not counted)."""
    scores: dict[tuple[str, str], int] = {}
    failures: dict[tuple[str, str], int] = {}
    for env in cases:
        case = env.event
        production = case.run_id is None
        if production:
            for s in case.scores:
                threshold = s.pass_threshold
                key = (s.name, "labelled" if s.data_type == "categorical" else "passed"
                       if s.value >= (PASS_THRESHOLD if threshold is None else threshold)
                       else "failed")
                scores[key] = scores.get(key, 0) + 1
        for f in case.failures:
            key = (f.name, "production" if production else "run")
            failures[key] = failures.get(key, 0) + 1
    for labels, n in scores.items():
        PRODUCTION_SCORES.labels(*labels).inc(n)
    for labels, n in failures.items():
        EVALUATOR_FAILURES.labels(*labels).inc(n)


def instrument(app: FastAPI) -> None:
    """Request counts and latencies per route, and `GET /metrics` (no API key, as /healthz:
    scraped from inside the deployment, it holds no data of the users)."""
    Instrumentator(excluded_handlers=["/metrics", "/healthz"]).instrument(app).expose(
        app, include_in_schema=False)


def serve(host: str, port: int | None) -> None:
    """For a service without an HTTP API: /metrics on `port` (nothing when it is None)."""
    if port is not None:
        start_http_server(port, addr=host)
