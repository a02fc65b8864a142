"""`evalstream run`'s own logic: finding the task, turning what it returns (or raises) into a
trace, and the calls it makes — in calls of at most 1,000 traces, retried while the API answers
503, a trace it refuses posted as a failure (left out if refused again), stopped with the run's id
when it refuses a call, and never more items in the task at once than asked. The APIs are httpx's
MockTransport here; tests/e2e/test_run_command.py runs it against the real services."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

import httpx
import pytest
from pydantic import BaseModel

from schemas.common import deterministic_id
from services.client import refusal
from services.runner import Runner, RunnerError, TaskResult, load_task, trace_of


def test_load_task_from_a_module_and_from_a_file(tmp_path, monkeypatch):
    (tmp_path / "my_agent.py").write_text("def answer(x):\n    return x * 2\n"
                                         "class Box:\n    def run(self, x):\n        return x\n"
                                         "box = Box()\nNOT_CALLABLE = 3\n")
    monkeypatch.chdir(tmp_path)
    assert load_task("my_agent:answer")(2) == 4
    assert load_task("my_agent:box.run")(5) == 5
    assert load_task(f"{tmp_path / 'my_agent.py'}:answer")(3) == 6


@pytest.mark.parametrize("spec, message", [
    ("my_agent", "give it as module:function"),
    ("my_agent:", "give it as module:function"),
    ("no_such_module_x:answer", "importing no_such_module_x failed: ModuleNotFoundError"),
    ("broken_agent:answer", "importing broken_agent failed: ZeroDivisionError"),
    ("my_agent:missing", "my_agent has no 'missing'"),
    ("my_agent:NOT_CALLABLE", "'NOT_CALLABLE' is not a function"),
    ("nowhere.py:answer", "no file nowhere.py"),
])
def test_load_task_says_what_is_wrong(tmp_path, monkeypatch, spec, message):
    (tmp_path / "my_agent.py").write_text("def answer(x):\n    return x\nNOT_CALLABLE = 3\n")
    (tmp_path / "broken_agent.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunnerError, match=message):
        load_task(spec)


class Answer(BaseModel):
    text: str


@dataclasses.dataclass
class Verdict:
    label: str


def test_trace_of_outputs_results_and_errors():
    base = {"trace_id": deterministic_id("evalstream-run", "r1", "i1"), "run_id": "r1",
            "dataset_item_id": "i1", "latency_ms": 12.346}
    assert trace_of("r1", "i1", "Paris", None, 12.3456) == {
        **base, "output": "Paris", "status": "succeeded"}
    assert trace_of("r1", "i1", TaskResult({"a": 1}, usage={"input_tokens": 3, "output_tokens": 4},
                                           cost=0.5, metadata={"model": "m"}), None, 12.3456) == {
        **base, "output": {"a": 1}, "status": "succeeded",
        "usage": {"input_tokens": 3, "output_tokens": 4}, "cost": 0.5, "metadata": {"model": "m"}}
    assert trace_of("r1", "i1", Answer(text="x"), None, 12.3456)["output"] == {"text": "x"}
    assert trace_of("r1", "i1", Verdict("ok"), None, 12.3456)["output"] == {"label": "ok"}
    assert trace_of("r1", "i1", None, TimeoutError("no answer in 30 s"), 12.3456) == {
        **base, "output": None, "status": "failed", "error": "TimeoutError: no answer in 30 s"}
    not_json = trace_of("r1", "i1", {1, 2}, None, 12.3456)
    assert not_json["status"] == "failed" and not_json["output"] is None
    assert not_json["error"].startswith("TypeError: the task's output is not JSON (set)")
    assert len(trace_of("r1", "i1", None, ValueError("x" * 200_000), 1)["error"]) == 100_000
    # The same run and item: the same trace id (a call sent again posts the same traces).
    assert trace_of("r1", "i1", "a", None, 1)["trace_id"] == base["trace_id"]
    assert trace_of("r2", "i1", "a", None, 1)["trace_id"] != base["trace_id"]


class FakeApis:
    """The ingest and query APIs as MockTransports: a dataset of `n` items, a run, and the
    trace calls as they come."""

    def __init__(self, n: int, traces_answers: list[int] | None = None,
                 gone: frozenset[str] = frozenset()):
        self.items = [{"id": f"i{k:05d}", "input": k} for k in range(n)]
        self.calls: list[list[dict]] = []
        self.traces_answers = list(traces_answers or [])
        self.gone = gone  # items "removed from the dataset": their traces are refused

    def ingest(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/runs":
            return httpx.Response(201, json={"id": "run-1", "name": body["name"],
                                             "total_items": len(self.items)})
        assert request.url.path == "/v1/traces"
        status = self.traces_answers.pop(0) if self.traces_answers else 202
        if status == 422:  # about the call, not one of its traces
            return httpx.Response(422, json={"detail": [
                {"loc": ["body", "traces"], "msg": "List should have at most 1000 items"}]})
        if status != 202:
            return httpx.Response(status, text="unavailable")
        for n, t in enumerate(body["traces"]):  # as the API: the first wrong trace, named
            if t["dataset_item_id"] in self.gone:
                return httpx.Response(422, json={"detail": [{
                    "loc": ["body", "traces", n, "dataset_item_id"],
                    "msg": "item is not in the run's dataset (or was removed from it)"}]})
            if "bogus" in (t.get("usage") or {}):
                return httpx.Response(422, json={"detail": [{
                    "loc": ["body", "traces", n, "usage", "bogus"],
                    "msg": "Extra inputs are not permitted"}]})
        self.calls.append(body["traces"])
        return httpx.Response(202, json={"accepted": len(body["traces"])})

    def query(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/datasets/ds/items"
        limit, offset = int(request.url.params["limit"]), int(request.url.params.get("offset", 0))
        page = self.items[offset:offset + limit]
        after = offset + len(page)
        return httpx.Response(200, json={"total": len(self.items), "items": page,
                                         "next_offset": after if after < len(self.items) else None})

    def runner(self) -> Runner:
        return Runner(httpx.AsyncClient(transport=httpx.MockTransport(self.ingest),
                                        base_url="http://ingest"),
                      httpx.AsyncClient(transport=httpx.MockTransport(self.query),
                                        base_url="http://query"),
                      retry_window_s=5)


async def test_every_item_is_posted_once_in_calls_of_at_most_1000():
    apis = FakeApis(2500, traces_answers=[202, 503, 202])  # the second call is answered 503 once
    report = await apis.runner().run("ds", lambda x: x * 10, name="n", concurrency=16)
    posted = [t for call in apis.calls for t in call]
    assert max(len(call) for call in apis.calls) <= 1000
    assert sorted(t["dataset_item_id"] for t in posted) == [i["id"] for i in apis.items]
    assert all(t["output"] == int(t["dataset_item_id"][1:]) * 10 for t in posted)
    assert (report.items, report.succeeded, report.failed, report.posted) == (2500, 2500, 0, 2500)


async def test_a_refused_call_stops_the_run_naming_it():
    apis = FakeApis(1500, traces_answers=[202, 422])
    with pytest.raises(RunnerError) as e:
        await apis.runner().run("ds", lambda x: x, name="n")
    assert "POST /v1/traces: HTTP 422: body.traces: List should have at most 1000 items" in \
        str(e.value)
    assert "run run-1: 1000 trace(s) posted before it; `--run run-1` continues" in str(e.value)


async def test_at_most_concurrency_items_are_in_the_task_at_once():
    apis = FakeApis(60)
    busy, most, lock = 0, 0, threading.Lock()

    def plain(x):
        nonlocal busy, most
        with lock:
            busy += 1
            most = max(most, busy)
        time.sleep(0.01)
        with lock:
            busy -= 1
        if x == 7:
            raise ValueError("seven")
        return x

    report = await apis.runner().run("ds", plain, name="n", concurrency=4)
    assert most == 4 and (report.succeeded, report.failed) == (59, 1)
    assert report.errors == {"ValueError": 1}

    busy = most = 0

    async def coroutine(x):
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.01)
        busy -= 1
        return x

    report = await FakeApis(60).runner().run("ds", coroutine, name="n", concurrency=5, limit=30)
    assert most == 5 and report.items == 30


@pytest.mark.parametrize("response, said", [
    (httpx.Response(422, json={"detail": [{"loc": ["body", "traces", 3, "cost"],
                                           "msg": "Input should be >= 0"}]}),
     "HTTP 422: body.traces.3.cost: Input should be >= 0"),
    (httpx.Response(404, json={"detail": "not here"}), "HTTP 404: not here"),
    (httpx.Response(502, text="<html>bad gateway</html>"), "HTTP 502: <html>bad gateway</html>"),
    (httpx.Response(401, json={"detail": "missing `Authorization: Bearer <key>`"}),
     "HTTP 401: missing `Authorization: Bearer <key>` (give --api-key or set EVALSTREAM_API_KEY;"),
])
def test_every_client_command_reads_a_refusal_the_same_way(response, said):
    assert refusal(response).startswith(said)


async def test_a_task_of_two_parameters_gets_the_whole_item():
    apis = FakeApis(3)
    apis.items[1]["metadata"] = {"tier": "gold"}

    def two(x, item):
        return [x, item["id"], (item.get("metadata") or {}).get("tier")]

    def one_with_default(x, scale=10):
        return x * scale

    def wrapped(*args):  # a wrapper passes on what it gets: input only
        return len(args)

    await apis.runner().run("ds", two, name="n")
    assert sorted(t["output"] for call in apis.calls for t in call) == [
        [0, "i00000", None], [1, "i00001", "gold"], [2, "i00002", None]]
    for task, outputs in ((one_with_default, [0, 10, 20]), (wrapped, [1, 1, 1])):
        apis.calls.clear()
        await apis.runner().run("ds", task, name="n")
        assert sorted(t["output"] for call in apis.calls for t in call) == outputs


async def test_a_refused_trace_is_posted_as_a_failure_and_the_rest_go_on():
    apis = FakeApis(30, gone=frozenset({"i00004"}))

    def task(x):  # item 7 reports a usage the API cannot take
        return TaskResult(x, usage={"bogus": 1} if x == 7 else {"input_tokens": 1,
                                                                 "output_tokens": 1})

    report = await apis.runner().run("ds", task, name="n")
    posted = {t["dataset_item_id"]: t for call in apis.calls for t in call}
    assert len(posted) == 29 and "i00004" not in posted  # refused twice: left out, reported
    assert report.refused == {
        "i00004": "dataset_item_id: item is not in the run's dataset (or was removed from it)"}
    assert posted["i00007"]["status"] == "failed" and posted["i00007"]["error"] == (
        "refused by the ingest API: usage.bogus: Extra inputs are not permitted")
    assert "usage" not in posted["i00007"]
    assert all(t["status"] == "succeeded" for i, t in posted.items() if i != "i00007")
    assert (report.succeeded, report.failed, report.posted) == (28, 2, 29)


async def test_an_item_past_the_timeout_fails_and_the_run_goes_on():
    def plain(x):
        time.sleep(1.0 if x == 3 else 0)
        return x

    async def coroutine(x):
        await asyncio.sleep(1.0 if x == 3 else 0)
        return x

    async def own_timeout(x):  # the task's own TimeoutError, with or without a timeout set
        raise TimeoutError("the model's client gave up")

    for timeout in (None, 5):
        apis = FakeApis(2)
        await apis.runner().run("ds", own_timeout, name="n", item_timeout=timeout)
        assert {t["error"] for call in apis.calls for t in call} == {
            "TimeoutError: the model's client gave up"}

    for task in (plain, coroutine):
        apis = FakeApis(8)
        started = time.monotonic()
        report = await apis.runner().run("ds", task, name="n", concurrency=2, item_timeout=0.2)
        assert time.monotonic() - started < 0.9  # not held up by the item that overran
        posted = {t["dataset_item_id"]: t for call in apis.calls for t in call}
        assert posted["i00003"]["status"] == "failed"
        assert posted["i00003"]["error"] == "TimeoutError: no answer within 0.2 s"
        assert posted["i00003"]["latency_ms"] >= 200
        assert (report.succeeded, report.failed) == (7, 1)


async def test_calls_stay_within_their_size_and_a_trace_too_large_for_any_is_a_failure(
        monkeypatch):
    import services.runner as runner

    monkeypatch.setattr(runner, "CALL_BYTES", 10_000)
    apis = FakeApis(20)
    report = await apis.runner().run(
        "ds", lambda x: "y" * (20_000 if x == 5 else 3_000), name="n", concurrency=1)
    sizes = [len(json.dumps({"traces": call}, separators=(",", ":"))) for call in apis.calls]
    assert max(sizes) <= 10_000 + 100 and len(apis.calls) >= 7  # 3 traces of ~3 KB a call
    posted = {t["dataset_item_id"]: t for call in apis.calls for t in call}
    assert len(posted) == 20 and posted["i00005"]["status"] == "failed"
    assert posted["i00005"]["error"].startswith("ValueError: the trace is 20,")
    assert (report.succeeded, report.failed, report.errors) == (19, 1, {"ValueError": 1})
