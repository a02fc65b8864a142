"""LLMJudge.judge_many against a real HTTP server on a local port: a fake judge
(tests/fake_judge.py) that speaks the OpenAI chat-completions shape and decides each verdict from
the request it is sent. The fake's behaviour is picked by the requested model name."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services.evaluator.evaluators import Score
from services.evaluator.llm_judge import JudgeHTTPError, LLMJudge
from services.settings import LLMJudgeSettings
from tests.fake_judge import FakeJudge, serving

API_KEY = "judge-test-key"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeJudge, str]]:
    fake = FakeJudge()
    with serving(fake) as url:
        yield fake, url


@pytest.fixture
def fake(server: tuple[FakeJudge, str]) -> FakeJudge:
    server[0].reset()
    return server[0]


@pytest.fixture
def base_url(server: tuple[FakeJudge, str]) -> str:
    return server[1]


def make_judge(base_url: str, transport: httpx.AsyncBaseTransport | None = None,
               **overrides: Any) -> LLMJudge:
    config = {"base_url": base_url, "api_key": API_KEY, "model": "judge-default",
              "concurrency": 4, "timeout_s": 2.0, "max_attempts": 3, "backoff_s": 0.01,
              "backoff_max_s": 0.05, **overrides}
    return LLMJudge(LLMJudgeSettings(**config), transport=transport)


def case(output: Any, expected: Any = None, trace_id: str = "t") -> ScoringCase:
    return ScoringCase(trace_id=trace_id, input="Capital of France?", output=output,
                       expected_output=expected)


# The model the settings name, as the fake judge's replies name it.
DEFAULT = FakeJudge.answering("judge-default")


def judged(*args: Any, **kw: Any) -> Score:
    """A score as the fake judge gives it, with the tokens its replies report (50 in, 12 out);
    or a given score with them."""
    if args and isinstance(args[0], Score):
        return dataclasses.replace(args[0], input_tokens=50, output_tokens=12)
    return Score(*args, input_tokens=50, output_tokens=12, **kw)


def spec(**options: Any) -> EvaluatorSpec:
    return EvaluatorSpec(type="llm_judge", **{"criteria": "Is the answer correct?", **options})


async def test_judges_over_http_with_scores_and_reasons(fake: FakeJudge, base_url: str) -> None:
    pairs = [(case("It is Paris.", "Paris"), spec()),
             (case("Munich", "Berlin"), spec(name="correct")),
             (case("The capital is Paris", "paris france"), spec(scale="numeric", model="m-num")),
             (case("Paris", "Paris"), spec(use_expected=False))]
    async with make_judge(base_url) as judge:
        results = await judge.judge_many(pairs)
    # Each score names the model that gave it, as the endpoint named it in its reply.
    default, numeric = DEFAULT, "m-num-2026-11-01"
    assert results == [
        judged(1.0, "boolean", comment="The output contains 'paris'.", model=default),
        judged(0.0, "boolean", comment="The output lacks 'berlin'.", model=default),
        judged(0.5, "numeric", comment="0.50 of the expected words.", model=numeric),
        judged(0.0, "boolean", comment="No expected output to compare with.", model=default),
    ]
    # What went over the wire: the OpenAI request shape, the key, the models.
    assert len(fake.requests) == 4
    assert sorted(r["model"] for r in fake.requests) == ["judge-default"] * 3 + ["m-num"]
    for body, headers in zip(fake.requests, fake.headers, strict=True):
        assert body["temperature"] == 0
        assert body["response_format"] == {"type": "json_object"}
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert headers["content-type"] == "application/json"


async def test_fenced_replies_are_read(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url) as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec(model="fenced"))])
    assert result == judged(1.0, "boolean", comment="The output contains 'paris'.",
                           model=FakeJudge.answering("fenced"))


async def test_500_twice_then_200_is_retried_and_succeeds(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url) as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec(model="flaky"))])
    assert result == judged(1.0, "boolean", comment="The output contains 'paris'.",
                           model=FakeJudge.answering("flaky"))
    assert fake.count("flaky") == 3


async def test_429_is_retried(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url, backoff_s=5.0, backoff_max_s=5.0) as judge:
        started = time.monotonic()
        [result] = await judge.judge_many([(case("Lyon", "Paris"), spec(model="limited"))])
    assert result == judged(0.0, "boolean", comment="The output lacks 'paris'.",
                           model=FakeJudge.answering("limited"))
    assert fake.count("limited") == 2
    assert time.monotonic() - started < 2  # Retry-After: 0 wins over the 5 s backoff


async def test_a_server_always_answering_500_fails_only_its_pair(fake: FakeJudge,
                                                                 base_url: str) -> None:
    pairs = [(case("Paris", "Paris"), spec()),
             (case("Paris", "Paris"), spec(model="broken")),
             (case("Rome", "Paris"), spec())]
    async with make_judge(base_url) as judge:
        results = await judge.judge_many(pairs)
    assert results[0] == judged(1.0, "boolean", comment="The output contains 'paris'.",
                               model=DEFAULT)
    assert results[2] == judged(0.0, "boolean", comment="The output lacks 'paris'.",
                               model=DEFAULT)
    error = results[1]
    assert isinstance(error, JudgeHTTPError)
    assert error.status_code == 500
    assert "500" in str(error) and "judge overloaded" in str(error)
    assert "after 3 attempts" in str(error)
    assert fake.count("broken") == 3  # max_attempts


async def test_max_attempts_is_honoured(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url, max_attempts=1) as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec(model="flaky"))])
    assert isinstance(result, JudgeHTTPError) and "after 1 attempt)" in str(result)
    assert fake.count("flaky") == 1


async def test_an_unreadable_verdict_is_an_error_and_not_retried(fake: FakeJudge,
                                                                  base_url: str) -> None:
    async with make_judge(base_url) as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec(model="garbage"))])
    assert isinstance(result, ValueError)
    assert "not JSON" in str(result) and "Looks good to me!" in str(result)
    assert fake.count("garbage") == 1


async def test_a_client_error_is_not_retried(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url.removesuffix("/v1") + "/nowhere") as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec())])
    assert isinstance(result, JudgeHTTPError) and result.status_code == 404
    assert "after 1 attempt)" in str(result)


async def test_timeouts_are_retried_then_reported(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url, timeout_s=0.1, max_attempts=2) as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec(model="hang"))])
    assert isinstance(result, JudgeHTTPError)
    assert "ReadTimeout" in str(result) and "after 2 attempts" in str(result)
    assert fake.count("hang") == 2


async def test_calls_past_the_batch_deadline_fail_and_the_others_stand(fake: FakeJudge,
                                                                        base_url: str) -> None:
    async with make_judge(base_url, timeout_s=5.0, batch_deadline_s=0.3) as judge:
        started = time.monotonic()
        results = await judge.judge_many([(case("Paris", "Paris"), spec(model="hang")),
                                          (case("Paris", "Paris"), spec())])
        took = time.monotonic() - started
    assert isinstance(results[0], TimeoutError) and "batch deadline of 0.3 s" in str(results[0])
    assert results[1] == judged(1.0, "boolean", comment="The output contains 'paris'.",
                               model=DEFAULT)
    assert took < 0.9  # not the hanging call's full second


async def test_connection_errors_are_retried_then_reported(base_url: str) -> None:
    from services.devstack import free_port

    async with make_judge(f"http://127.0.0.1:{free_port()}/v1") as judge:
        [result] = await judge.judge_many([(case("Paris", "Paris"), spec())])
    assert isinstance(result, JudgeHTTPError)
    assert "ConnectError" in str(result) and "after 3 attempts" in str(result)


@pytest.mark.parametrize("own_transport", [False, True], ids=["pool", "own-transport"])
async def test_concurrency_is_bounded(fake: FakeJudge, base_url: str, own_transport: bool) -> None:
    # With a transport of its own (whose pool allows 100 connections) only the judge's own
    # bound holds the line.
    transport = httpx.AsyncHTTPTransport() if own_transport else None
    pairs = [(case(f"answer {i}", f"answer {i}", trace_id=f"t{i}"), spec(model="slow"))
             for i in range(12)]
    async with make_judge(base_url, concurrency=3, transport=transport) as judge:
        results = await judge.judge_many(pairs)
    assert results == [judged(1.0, "boolean", comment=f"The output contains 'answer {i}'.",
                             model=FakeJudge.answering("slow")) for i in range(12)]
    assert fake.count("slow") == 12
    assert fake.max_in_flight == 3


async def test_calls_spread_over_small_pools_reach_the_bound(fake: FakeJudge,
                                                            base_url: str) -> None:
    # 20 calls in flight go through 3 clients of 7 connections (httpcore's pool costs CPU per
    # connection on every request): the least busy client takes each call, so all 20 run at
    # once; had one pool taken them all, at most 7 would.
    pairs = [(case(f"answer {i}", f"answer {i}", trace_id=f"t{i}"), spec(model="slow"))
             for i in range(60)]
    async with make_judge(base_url, concurrency=20) as judge:
        results = await judge.judge_many(pairs)
    assert all(isinstance(r, Score) and r.value == 1.0 for r in results)
    assert fake.count("slow") == 60
    assert fake.max_in_flight == 20


async def test_waiting_for_a_turn_does_not_count_against_the_timeout(fake: FakeJudge,
                                                                     base_url: str) -> None:
    # 10 calls of 50 ms one at a time take 500 ms, twice the timeout of one call: only calls
    # in flight may time out, not those queued behind the concurrency bound.
    pairs = [(case(f"answer {i}", "answer"), spec(model="slow")) for i in range(10)]
    async with make_judge(base_url, concurrency=1, timeout_s=0.25, max_attempts=1) as judge:
        results = await judge.judge_many(pairs)
    assert results == [judged(1.0, "boolean", comment="The output contains 'answer'.",
                             model=FakeJudge.answering("slow"))] * 10
    assert fake.max_in_flight == 1


async def test_the_bound_holds_across_concurrent_calls(fake: FakeJudge, base_url: str) -> None:
    async with make_judge(base_url, concurrency=2) as judge:
        batches = await asyncio.gather(*(
            judge.judge_many([(case(f"a{b}-{i}", "x"), spec(model="slow")) for i in range(3)])
            for b in range(3)))
    assert all(isinstance(r, Score) for batch in batches for r in batch)
    assert fake.count("slow") == 9
    assert fake.max_in_flight == 2


async def test_identical_requests_are_judged_once(fake: FakeJudge, base_url: str) -> None:
    paris, munich = case("Paris", "Paris"), case("Munich", "Berlin")
    pairs = [(paris, spec()), (munich, spec()), (paris, spec(name="again")),
             (case("Paris", "Paris", trace_id="other trace"), spec()), (munich, spec()),
             (paris, spec(scale="numeric"))]
    async with make_judge(base_url) as judge:
        results = await judge.judge_many(pairs)
    yes = Score(1.0, "boolean", comment="The output contains 'paris'.", model=DEFAULT)
    no = Score(0.0, "boolean", comment="The output lacks 'berlin'.", model=DEFAULT)
    # A call's tokens count once: on the first case that shares its answer.
    assert results == [judged(yes), judged(no), yes, yes, no, judged(Score(
        1.0, "numeric", comment="1.00 of the expected words.", model=DEFAULT))]
    # paris/boolean, munich/boolean, paris/numeric: the same messages to the same model once
    assert len(fake.requests) == 3
    assert all(n == 1 for n in fake.seen.values())


async def test_calls_and_the_tokens_the_endpoint_reports_are_counted_per_model(fake, base_url):
    """Prometheus counters (services/metrics.py): each answered call of a model and the tokens
    its reply says it used (the fake's `usage`: 50 prompt, 12 completion), each failed call."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    model = f"counted-{time.monotonic_ns()}"
    failed_before = sample("evalstream_judge_calls_total", model="broken", outcome="failed")
    async with make_judge(base_url, model=model) as judge:
        verdicts = await judge.judge_many([(case("Paris", "Paris"), spec()),
                                           (case("Lyon", "Paris"), spec()),
                                           (case("Rome", "Paris"), spec(model="broken"))])
    assert [type(v).__name__ for v in verdicts] == ["Score", "Score", "JudgeHTTPError"]
    assert sample("evalstream_judge_calls_total", model=model, outcome="answered") == 2
    assert sample("evalstream_judge_tokens_total", model=model, kind="input") == 100
    assert sample("evalstream_judge_tokens_total", model=model, kind="output") == 24
    assert sample("evalstream_judge_calls_total", model="broken",
                  outcome="failed") == failed_before + 1
