"""`evalstream run DATASET --task module:function`: a team's own agent over a dataset's items, as a
run — the step between a dataset and its scores that every team otherwise writes by hand.

A new run is started (`POST /v1/runs`, which snapshots the dataset's evaluators), the dataset's
items are read page by page from the query API, and each item's `input` goes through the task:
a Python function, plain or `async`, called `concurrency` at a time (plain ones in as many
threads); a function of two parameters also gets the whole item (its id, expected output and
metadata). What it returns is the item's output; a `TaskResult` adds token usage, cost and
metadata. A task that raises gives a failed trace carrying the error, and the run goes on. The
traces are posted in calls of up to 1,000 (`POST /v1/traces`) as they finish, with the latency
measured around each call, and retried while the API answers 502/503/504 or cannot be reached. A
trace the API refuses (an item removed from the dataset meanwhile, a usage it cannot take) is
posted as a failed trace saying why, or, refused again, left out and reported; the others go on.

Trace ids follow from the run and the item, so a call sent twice (a retry) posts the same traces
again rather than new ones. `--run RUN` continues a run that stopped part-way: the items that
already have a trace are skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from schemas.common import deterministic_id
from services.client import first_error, refusal
from services.threads import in_daemon_thread

CHUNK = 1000  # traces a call, the API's limit
# Bytes of traces a call, well within the API's body limit (16 MB by default); a trace larger
# than this alone (the broker takes events of up to 8 MB) is posted as a failure instead.
CALL_BYTES = 8 * 1024 * 1024
PAGE = 1000  # items read a call, the query API's limit
FLUSH_S = 1.0  # a call goes out at least this often while traces are waiting
ERROR_LIMIT = 100_000  # the API's limit on a trace's `error`
REFUSED = "refused by the ingest API: "  # a failed trace's error when the API refused the trace


@dataclass(frozen=True)
class TaskResult:
    """What a task may return instead of the bare output: the output with what it cost."""

    output: Any
    usage: dict[str, int] | None = None  # {"input_tokens": n, "output_tokens": m}
    cost: float | None = None
    metadata: dict[str, Any] | None = None


class RunnerError(RuntimeError):
    """The run cannot go on (or start); the message says why and what was posted."""


class TraceRefused(RunnerError):
    """The API refused one trace of a call (422 naming `traces.<index>`): `why` is its answer."""

    def __init__(self, message: str, index: int, why: str):
        super().__init__(message)
        self.index, self.why = index, why


@dataclass
class RunReport:
    run_id: str
    dataset_id: str
    name: str
    items: int = 0  # items sent through the task
    skipped: int = 0  # items that already had a trace (--run)
    succeeded: int = 0
    failed: int = 0
    posted: int = 0  # traces the API accepted
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # exception type -> items
    refused: dict[str, str] = field(default_factory=dict)  # item -> why, not posted at all

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_task(spec: str) -> Callable[[Any], Any]:
    """The function named `module:function` (importable from the current directory, as uvicorn
    finds an app) or `path/to/file.py:function`; RunnerError saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RunnerError(f"{spec!r}: give it as module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise RunnerError(f"{spec!r}: no file {path}")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)  # type: ignore[arg-type]
            sys.modules[path.stem] = module
            loaded.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except RunnerError:
        raise
    except Exception as e:  # the user's module failed to import: say so, with its error
        raise RunnerError(f"{spec!r}: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None
    task = module
    for part in attr.split("."):
        task = getattr(task, part, None)
        if task is None:
            raise RunnerError(f"{spec!r}: {module_name} has no {attr!r}")
    if not callable(task):
        raise RunnerError(f"{spec!r}: {attr!r} is not a function")
    return task  # type: ignore[return-value]


def _takes_item(task: Callable) -> bool:
    """Whether the task takes the whole item (id, input, expected_output, metadata) as a second
    argument: a function whose second positional parameter has no default (`*args` alone: input
    only, as a decorator's wrapper passes it on)."""
    try:
        params = inspect.signature(task).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: input only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


def _jsonable(value: Any) -> Any:
    """A task's output as JSON: pydantic models and dataclasses are dumped; anything else must
    be JSON already (TypeError otherwise)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    json.dumps(value)  # raises TypeError/ValueError, named in the failed trace
    return value


def trace_of(run_id: str, item_id: str, result: Any, error: BaseException | None,
             latency_ms: float) -> dict:
    """The trace posted for one item: the task's result, or the error it raised."""
    trace: dict[str, Any] = {"trace_id": deterministic_id("evalstream-run", run_id, item_id),
                             "run_id": run_id, "dataset_item_id": item_id,
                             "latency_ms": round(latency_ms, 3)}
    if error is None:
        extra = result if isinstance(result, TaskResult) else TaskResult(output=result)
        try:
            trace["output"] = _jsonable(extra.output)
        except (TypeError, ValueError) as e:
            error = TypeError(f"the task's output is not JSON ({type(extra.output).__name__}): "
                              f"{e}")
        else:
            trace["status"] = "succeeded"
            trace |= {k: v for k, v in (("usage", extra.usage), ("cost", extra.cost),
                                        ("metadata", extra.metadata)) if v is not None}
            return trace
    trace |= {"output": None, "status": "failed",
              "error": f"{type(error).__name__}: {error}"[:ERROR_LIMIT]}
    return trace


def _retryable(e: BaseException) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    return isinstance(e, httpx.HTTPStatusError) and e.response.status_code in (502, 503, 504)


class Runner:
    """One run of a task over a dataset, through the ingest and query APIs."""

    def __init__(self, ingest: httpx.AsyncClient, query: httpx.AsyncClient, *,
                 retry_window_s: float = 120.0, items_wait_s: float = 30.0):
        self.ingest = ingest
        self.query = query
        self.retry_window_s = retry_window_s
        self.items_wait_s = items_wait_s

    async def _call(self, client: httpx.AsyncClient, method: str, path: str,
                    expect: int, **kwargs) -> dict:
        """One API call, retried while the API is unreachable or answers 502/503/504;
        RunnerError for any other refusal, saying what the API said."""
        try:
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception(_retryable), reraise=True,
                    wait=wait_exponential(multiplier=0.2, max=5),
                    stop=stop_after_delay(self.retry_window_s)):
                with attempt:
                    r = await client.request(method, path, **kwargs)
                    if r.status_code in (502, 503, 504):
                        r.raise_for_status()
        except httpx.HTTPStatusError as e:
            raise RunnerError(f"{method} {path}: {refusal(e.response)} "
                              f"(for {self.retry_window_s:g} s)") from None
        except httpx.HTTPError as e:
            raise RunnerError(f"{method} {path}: {client.base_url} unreachable for "
                              f"{self.retry_window_s:g} s: {type(e).__name__}: {e}") from None
        if r.status_code != expect:
            loc, msg = first_error(r)
            if r.status_code == 422 and loc[:2] == ["body", "traces"] and len(loc) > 2 \
                    and loc[2].isdigit():
                raise TraceRefused(f"{method} {path}: {refusal(r)}", int(loc[2]),
                                   f"{'.'.join(loc[3:]) or 'trace'}: {msg}")
            raise RunnerError(f"{method} {path}: {refusal(r)}")
        return r.json()

    async def start(self, dataset_id: str, name: str, metadata: dict | None,
                    evaluators: list[dict] | None = None) -> dict:
        body: dict[str, Any] = {"dataset_id": dataset_id, "name": name}
        if metadata:
            body["metadata"] = metadata
        if evaluators:
            body["evaluators"] = evaluators
        return await self._call(self.ingest, "POST", "/v1/runs", 201, json=body)

    async def _pages(self, path: str, key: str, **params) -> AsyncIterator[list[dict]]:
        offset: int | None = 0
        while offset is not None:
            page = await self._call(self.query, "GET", path, 200,
                                    params={**params, "limit": PAGE, "offset": offset})
            yield page[key]
            offset = page["next_offset"]

    async def traced_items(self, run_id: str) -> set[str]:
        """The items of a run that already have a trace (in the read model)."""
        done: set[str] = set()
        async for results in self._pages(f"/v1/runs/{run_id}/results", "items"):
            done.update(r["dataset_item_id"] for r in results if r["dataset_item_id"])
        return done

    async def _await_items(self, dataset_id: str, expected: int) -> None:
        """Wait (briefly) until the query API lists the items the run was started with: items
        just uploaded reach the read model a moment after the API took them."""
        deadline = time.monotonic() + self.items_wait_s
        while True:
            page = await self._call(self.query, "GET", f"/v1/datasets/{dataset_id}/items", 200,
                                    params={"limit": 1})
            if page["total"] >= expected or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.2)

    async def run(self, dataset_id: str, task: Callable[[Any], Any], *, name: str,
                  metadata: dict | None = None, run_id: str | None = None,
                  evaluators: list[dict] | None = None,
                  concurrency: int = 8, limit: int | None = None,
                  item_timeout: float | None = None,
                  on_item: Callable[[], object] = lambda: None,
                  on_start: Callable[[RunReport, int], object] = lambda r, n: None) -> RunReport:
        """Start a run (with `evaluators`, its own specs instead of the dataset's; or continue
        `run_id`), send every item's input through `task`, post the traces; returns once every
        trace is posted. `on_start` is told how many items there
        are to do, `on_item` each one done. An item whose call takes longer than `item_timeout`
        seconds fails with a TimeoutError (an async call is cancelled; a plain function's thread
        cannot be stopped and runs on, its result ignored: services/threads.py)."""
        started = time.monotonic()
        if run_id is None:
            run = await self.start(dataset_id, name, metadata, evaluators)
            report = RunReport(run_id=run["id"], dataset_id=dataset_id, name=run["name"])
            await self._await_items(dataset_id, run["total_items"])
            done: set[str] = set()
        else:
            summary = await self._call(self.query, "GET", f"/v1/runs/{run_id}", 200)
            report = RunReport(run_id=run_id, dataset_id=summary["dataset_id"],
                               name=summary["name"])
            dataset_id = summary["dataset_id"]
            done = await self.traced_items(run_id)
        total = (await self._call(self.query, "GET", f"/v1/datasets/{dataset_id}/items", 200,
                                  params={"limit": 1}))["total"]
        todo = max(0, total - len(done))
        on_start(report, todo if limit is None else min(limit, todo))

        items: asyncio.Queue = asyncio.Queue(maxsize=4 * concurrency)
        traces: asyncio.Queue = asyncio.Queue()
        # A coroutine function, or an object whose __call__ is one.
        is_async = inspect.iscoroutinefunction(task) or inspect.iscoroutinefunction(
            type(task).__call__)
        def overran() -> TimeoutError:
            return TimeoutError(f"no answer within {item_timeout:g} s")

        with_item = _takes_item(task)

        def args(item: dict) -> tuple:
            return (item["input"], item) if with_item else (item["input"],)

        def timed(item: dict) -> tuple[Any, BaseException | None, float]:
            t0 = time.perf_counter()
            try:
                return task(*args(item)), None, (time.perf_counter() - t0) * 1000
            except Exception as e:  # the item's failure, not the run's
                return None, e, (time.perf_counter() - t0) * 1000

        async def timed_async(item: dict) -> tuple[Any, BaseException | None, float]:
            t0 = time.perf_counter()
            deadline = asyncio.timeout(item_timeout)
            try:
                async with deadline:
                    result = await task(*args(item))
                return result, None, (time.perf_counter() - t0) * 1000
            except Exception as e:  # the task's own TimeoutError stays its own
                error = overran() if deadline.expired() else e
                return None, error, (time.perf_counter() - t0) * 1000

        async def feed() -> None:
            sent = 0
            async for page in self._pages(f"/v1/datasets/{dataset_id}/items", "items"):
                for item in page:
                    if item["id"] in done:
                        report.skipped += 1
                        continue
                    if limit is not None and sent >= limit:
                        break
                    await items.put(item)
                    sent += 1
                if limit is not None and sent >= limit:
                    break
            for _ in range(concurrency):
                await items.put(None)

        async def work() -> None:
            while (item := await items.get()) is not None:
                if is_async:
                    result, error, ms = await timed_async(item)
                else:
                    try:
                        result, error, ms = await asyncio.wait_for(
                            in_daemon_thread(timed, item, name="evalstream-task"),
                            item_timeout)
                    except TimeoutError:
                        result, error, ms = None, overran(), item_timeout * 1000  # type: ignore
                trace = trace_of(report.run_id, item["id"], result, error, ms)
                report.items += 1
                if trace["status"] == "succeeded":
                    report.succeeded += 1
                else:
                    report.failed += 1
                    kind = trace["error"].split(":", 1)[0]
                    report.errors[kind] = report.errors.get(kind, 0) + 1
                await traces.put(trace)
                on_item()

        async def produce() -> None:
            await asyncio.gather(feed(), *(work() for _ in range(concurrency)))
            await traces.put(None)

        async def post() -> None:
            pending: list[dict] = []
            oldest = 0.0  # when the oldest pending trace was done
            size = 0  # bytes of the pending traces, as JSON

            async def send() -> None:
                nonlocal size
                while pending:
                    try:
                        await self._call(self.ingest, "POST", "/v1/traces", 202,
                                         json={"traces": pending})
                    except TraceRefused as e:  # that trace, not the others: see refused()
                        refused(e.index, e.why)
                        continue
                    report.posted += len(pending)
                    pending.clear()
                size = 0

            def sized(trace: dict) -> tuple[dict, int]:
                """The trace and its size as JSON; one too large for any call, as a failure."""
                n = len(json.dumps(trace, separators=(",", ":")))
                if n <= CALL_BYTES:
                    return trace, n
                failed = as_failure(trace, "ValueError", f"ValueError: the trace is {n:,} bytes "
                                    f"as JSON, more than a call takes ({CALL_BYTES:,})")
                return failed, len(json.dumps(failed))

            def refused(n: int, why: str) -> None:
                """A trace the API refuses (an item removed from the dataset meanwhile, a
                TaskResult's usage it cannot take, ...) is posted as a failed trace saying why;
                refused again, it is left out (counted in `refused`)."""
                trace = pending[n]
                if trace["status"] == "failed" and trace["error"].startswith(REFUSED):
                    del pending[n]
                    report.refused[trace["dataset_item_id"]] = why
                    return
                pending[n] = as_failure(trace, "refused", f"{REFUSED}{why}")

            def as_failure(trace: dict, kind: str, error: str) -> dict:
                """The trace as a failure carrying `error` (without what the task returned),
                counted as one of `kind`."""
                if trace["status"] == "succeeded":
                    report.succeeded -= 1
                    report.failed += 1
                report.errors[kind] = report.errors.get(kind, 0) + 1
                return {k: trace[k] for k in ("trace_id", "run_id", "dataset_item_id",
                                              "latency_ms")} | {
                    "output": None, "status": "failed", "error": error}

            while True:
                wait = max(0.0, oldest + FLUSH_S - time.monotonic()) if pending else FLUSH_S
                try:
                    trace = await asyncio.wait_for(traces.get(), wait)
                except TimeoutError:
                    trace = ...
                if trace is None:
                    break
                if trace is not ...:
                    trace, n = sized(trace)
                    if pending and size + n > CALL_BYTES:
                        await send()
                    if not pending:
                        oldest = time.monotonic()
                    pending.append(trace)
                    size += n
                if pending and (len(pending) >= CHUNK or time.monotonic() - oldest >= FLUSH_S):
                    await send()
            if pending:
                await send()

        try:
            # One failing (the API refusing a call) stops the other: no task runs for nothing.
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                group.create_task(post())
        except BaseExceptionGroup as errors:
            first = errors.exceptions[0]
            if isinstance(first, RunnerError):
                raise RunnerError(f"{first} (run {report.run_id}: {report.posted} trace(s) "
                                  f"posted before it; `--run {report.run_id}` continues the "
                                  "run)") from None
            raise first from None
        report.seconds = round(time.monotonic() - started, 3)
        return report


def run_dataset(dataset_id: str | None, task: Callable[[Any], Any], *, name: str,
                ingest_url: str | None = None, query_url: str | None = None,
                api_key: str | None = None, **options: Any) -> RunReport:
    """Runner.run from plain Python (a script, not a running event loop), with the APIs and key
    found as the client commands find them (services/client.py: EVALSTREAM_INGEST_URL,
    EVALSTREAM_QUERY_URL, EVALSTREAM_API_KEY, ...); `options` as Runner.run takes them.

        from services.runner import run_dataset
        report = run_dataset(dataset_id, answer, name="prompt v2", concurrency=16)
    """
    from services import client
    from services.settings import Settings

    settings = Settings()
    headers = client.auth(client.client_key(settings, api_key))

    async def go() -> RunReport:
        async with httpx.AsyncClient(base_url=client.ingest_url(settings, ingest_url),
                                     headers=headers, timeout=60) as ingest, \
                httpx.AsyncClient(base_url=client.query_url(settings, query_url),
                                  headers=headers, timeout=60) as query:
            return await Runner(ingest, query).run(dataset_id or "", task, name=name, **options)

    return asyncio.run(go())
