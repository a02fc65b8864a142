"""The services' Prometheus metrics as a scraper reads them: after a run's traces are scored,
ingest has counted its requests and the traces it published, the evaluator (on its metrics
port) the traces it consumed and the cases it published, the projections (on the query API's
port) what they consumed and each partition's lag."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    async with httpx.AsyncClient(timeout=10) as client:  # no API key: as Prometheus scrapes
        r = await client.get(url)
    assert r.status_code == 200, r.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


async def test_metrics_count_what_each_service_did(api, migrated):
    topics = migrated.topics
    urls = {"ingest": f"http://127.0.0.1:{migrated.ingest_port}/metrics",
            "projections": f"http://127.0.0.1:{migrated.query_port}/metrics",
            "evaluator": f"http://127.0.0.1:{migrated.metrics_port}/metrics"}
    before = {name: await _scrape(url) for name, url in urls.items()}

    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": "Paris"} for n in range(5)]
    dataset_id = await api.dataset_with_items(items)
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "m"}))["id"]
    await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                            "dataset_item_id": item["id"], "output": "Paris",
                            "status": "succeeded"} for n, item in enumerate(items)])
    await api.eventually(f"/v1/runs/{run_id}", lambda s: s["items_with_scores"] == 5)
    after = {name: await _scrape(url) for name, url in urls.items()}

    def grew(scraped: str, name: str, **labels: str) -> float:
        return _value(after[scraped], name, **labels) - _value(before[scraped], name, **labels)

    assert grew("ingest", "evalstream_published_records_total", service="ingest",
                topic=topics.traces) == 5
    assert grew("ingest", "http_requests_total", handler="/v1/traces", method="POST",
                status="2xx") == 1
    assert grew("evaluator", "evalstream_consumed_records_total", service="evaluator",
                topic=topics.traces) >= 5
    assert grew("evaluator", "evalstream_published_records_total", service="evaluator",
                topic=topics.scores) >= 5
    assert grew("projections", "evalstream_consumed_records_total", service="projections",
                topic=topics.scores) >= 5
    assert grew("projections", "evalstream_batches_total", service="projections",
                outcome="ok") >= 1
    lags = [v for (name, labels), v in after["projections"].items()
            if name == "evalstream_consumer_lag" and ("topic", topics.scores) in labels]
    assert lags and all(v >= 0 for v in lags)
    # /metrics needs no key and is not part of the API's documented routes
    spec = (await api.query.get("/openapi.json")).json()
    assert "/metrics" not in spec["paths"]


async def test_production_scores_are_counted_by_name_and_outcome(api, migrated):
    """Traces a scoring rule scores: their scores by outcome (passed, failed, labelled) and the
    evaluators that failed, on the evaluator's metrics port, as an alert on a production pass
    rate reads them."""
    url = f"http://127.0.0.1:{migrated.metrics_port}/metrics"
    tag = uuid.uuid4().hex[:8]
    caps, tone = f"caps_{tag}", f"tone_{tag}"
    r = await api.ingest.put(f"/v1/scoring-rules/metrics-{tag}", json={
        "evaluators": [{"type": "regex", "pattern": "^[A-Z]", "name": caps},
                       {"type": "tone", "name": tone}],
        "where": {"suite": tag}})
    assert r.status_code == 200, r.text
    before = await _scrape(url)
    try:
        outputs = ["Paris", "PARIS", "paris", "boom"]
        await api.post_traces([{"trace_id": f"{tag}-{n}", "output": out, "status": "succeeded",
                                "metadata": {"suite": tag}} for n, out in enumerate(outputs)])
        for n in range(len(outputs)):
            await api.eventually(f"/v1/traces/{tag}-{n}",
                                 lambda t: t["scores"] or t["evaluation_failures"])
    finally:
        assert (await api.ingest.delete(f"/v1/scoring-rules/metrics-{tag}")).status_code == 202
    after = await _scrape(url)

    def grew(metric: str, **labels: str) -> float:
        return _value(after, metric, **labels) - _value(before, metric, **labels)

    scores = "evalstream_production_scores_total"
    assert grew(scores, name=caps, outcome="passed") == 2  # Paris, PARIS
    assert grew(scores, name=caps, outcome="failed") == 2  # paris, boom
    assert grew(scores, name=tone, outcome="labelled") == 3
    assert grew("evalstream_evaluator_failures_total", name=tone, scope="production") == 1
