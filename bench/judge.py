"""The LLM judge's capacity (`python -m bench.judge`): judged cases per second and the evaluator's
CPU per judged case, at a given model latency and concurrency.

`LLMJudge.judge_many` (what the evaluator runs for a batch) is driven in batches of
`EVALSTREAM_LLM_JUDGE__MAX_BATCH` cases against a local OpenAI-compatible endpoint that answers
each call after `--latency-ms` (tests/fake_judge.py, in a process of its own so that its CPU is
not counted). Every case has its own output, so no call is saved by deduplication. One process;
add evaluator processes (and partitions) for more. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import psutil
import typer
from rich.console import Console
from rich.table import Table

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services.evaluator.llm_judge import LLMJudge
from services.settings import LLMJudgeSettings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _serve(urls) -> None:  # in the judge's own process
    from tests.fake_judge import FakeJudge, serving

    with serving(FakeJudge()) as url:
        urls.put(url)
        while True:
            time.sleep(3600)


async def measure(url: str, cases: int, latency_ms: int, concurrency: int,
                  max_batch: int) -> dict:
    settings = LLMJudgeSettings(base_url=url, api_key="bench", concurrency=concurrency,
                                max_batch=max_batch, timeout_s=max(30.0, latency_ms / 250))
    spec = EvaluatorSpec(type="llm_judge", criteria="Does the answer name the expected city?",
                         model=f"wait-{latency_ms}")
    pairs = [(ScoringCase(trace_id=f"t{i}", output=f"The capital is Paris ({i}).",
                          expected_output="Paris"), spec) for i in range(cases)]
    me = psutil.Process()
    async with LLMJudge(settings) as judge:
        await judge.judge_many(pairs[:min(concurrency, cases)])  # connections opened
        cpu, started = sum(me.cpu_times()[:2]), time.perf_counter()
        failed = 0
        for start in range(0, cases, max_batch):
            results = await judge.judge_many(pairs[start:start + max_batch])
            failed += sum(isinstance(r, BaseException) for r in results)
        seconds = time.perf_counter() - started
        cpu = sum(me.cpu_times()[:2]) - cpu
    return {"latency_ms": latency_ms, "concurrency": concurrency, "cases": cases,
            "failed": failed, "seconds": round(seconds, 2),
            "cases_per_s": round(cases / seconds, 1),
            "bound_cases_per_s": round(concurrency * 1000 / latency_ms, 1),
            "cpu_us_per_case": round(cpu / cases * 1e6, 1)}


@app.command()
def main(cases: int = typer.Option(2000, min=1, help="Judged cases per measurement."),
         latency_ms: list[int] = typer.Option([50, 500, 2000], help="Model latency (repeat)."),
         concurrency: int = typer.Option(32, min=1, help="Calls in flight (…__CONCURRENCY)."),
         max_batch: int = typer.Option(256, min=1, help="Cases per batch (…__MAX_BATCH).")) -> None:
    """Judged cases per second and CPU per case, one evaluator process."""
    ctx = multiprocessing.get_context("spawn")
    urls = ctx.Queue()
    server = ctx.Process(target=_serve, args=(urls,), daemon=True)
    server.start()
    try:
        url = urls.get(timeout=30)
        rows = [asyncio.run(measure(url, cases, ms, concurrency, max_batch))
                for ms in latency_ms]
    finally:
        server.terminate()
    table = Table(title=f"LLM judge, one process: {cases:,} cases per row, batches of "
                        f"{max_batch}, {concurrency} calls in flight")
    for column in ("model latency", "judged cases/s", "bound (concurrency / latency)",
                   "evaluator CPU per case", "failed"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['latency_ms']} ms", f"{r['cases_per_s']:,}",
                      f"{r['bound_cases_per_s']:,}", f"{r['cpu_us_per_case']:,} µs",
                      str(r["failed"]))
    Console().print(table)


if __name__ == "__main__":
    app()
