"""`evalstream run` as a user runs it against the running services: an agent (tests/e2e/
agent_task.py) over a dataset, stopped after part of it (`--limit`) and continued (`--run`), then
scored and checked — and an async agent from Python (`run_dataset`)."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from services.runner import run_dataset
from tests.conftest import ROOT, evalstream_command, settings_env
from tests.e2e.agent_task import answer_async

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

N = 40  # items; n % 5 == 0 is answered wrong, n == 7 raises, n == 11's trace is refused


def _env(settings) -> dict[str, str]:
    return {**settings_env(settings),
            "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{settings.ingest_port}",
            "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{settings.query_port}"}


async def _dataset(api) -> str:
    prefix = uuid.uuid4().hex[:8]
    return await api.dataset_with_items(
        [{"id": f"{prefix}-{n:02d}", "input": {"n": n}, "expected_output": str(n)}
         for n in range(N)], evaluators=[{"type": "exact_match"}], name=f"run {prefix}")


async def test_run_an_agent_over_a_dataset_then_continue_and_check_it(api, migrated):
    dataset_id = await _dataset(api)
    dataset = await api.eventually(f"/v1/datasets/{dataset_id}", lambda d: d["item_count"] == N)
    # Named by its name (unique: the test's own prefix).
    out = await evalstream_command(_env(migrated), "run", dataset["name"],
                                   "--task", "tests.e2e.agent_task:answer", "--limit", "25",
                                   "--name", "agent v1", "--metadata", "prompt=v1")
    run_id = out.strip().splitlines()[-1]
    await api.eventually(f"/v1/runs/{run_id}", lambda s: s["completed_items"]
                         + s["failed_items"] == 25)

    # Continued: the 25 items with a trace are skipped, the other 15 go through the task.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "run", "--run", run_id,
        "--task", "tests.e2e.agent_task:answer", env=_env(migrated), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == run_id
    assert "15 item(s) through the task" in err.decode() and "25 already traced" in err.decode()

    # Traces and scores arrive on two topics, in either order: both awaited.
    summary = await api.eventually(f"/v1/runs/{run_id}",
                                   lambda s: s["scores"].get("exact_match", {}).get("count")
                                   == N - 2 and s["completed_items"] + s["failed_items"] == N)
    wrong = len(range(0, N, 5))
    assert (summary["name"], summary["metadata"]) == ("agent v1", {"prompt": "v1"})
    assert (summary["completed_items"], summary["failed_items"]) == (N - 2, 2)
    assert summary["scores"]["exact_match"]["average"] == pytest.approx((N - 2 - wrong) / (N - 2))
    assert summary["total_tokens"] == 12 * (N - 2)
    assert summary["total_cost"] == pytest.approx(0.001 * (N - 2))
    assert summary["latency_p50_ms"] is not None

    # The task's failure, and the trace the API refused, posted as a failure saying why.
    failed = (await api.query.get(f"/v1/runs/{run_id}/results",
                                  params={"status": "failed"})).json()["items"]
    assert [(i["dataset_item_id"][-2:], i["error"]) for i in failed] == [
        ("07", "TimeoutError: the model did not answer within 30 s"),
        ("11", "refused by the ingest API: usage.prompt_tokens: Extra inputs are not permitted")]
    first = (await api.query.get(f"/v1/runs/{run_id}/results", params={"limit": 1})).json()
    assert first["items"][0]["metadata"] == {"model": "fake-1"}

    report = await evalstream_command(_env(migrated), "check", run_id,
                                      "--min-pass-rate", "0.75", "--wait", "60")
    assert "passed" in report


async def test_a_run_with_specs_of_its_own(api, migrated, tmp_path):
    """--evaluators: this run's specs instead of the dataset's (a plugin's type among them, which
    ingest checks: the client has not the plugin)."""
    dataset_id = await _dataset(api)
    await api.eventually(f"/v1/datasets/{dataset_id}", lambda d: d["item_count"] == N)
    specs = tmp_path / "specs.yaml"
    specs.write_text("- type: word_limit\n  max_words: 1\n- type: regex\n  pattern: '^1'\n")
    env = {k: v for k, v in _env(migrated).items() if k != "EVALSTREAM_EVALUATOR_PLUGINS"}
    out = await evalstream_command(env, "run", dataset_id, "--task",
                                   "tests.e2e.agent_task:answer", "--limit", "5",
                                   "--evaluators", str(specs))
    run_id = out.strip().splitlines()[-1]
    summary = await api.eventually(
        f"/v1/runs/{run_id}", lambda s: s["scores"].get("regex", {}).get("count") == 5)
    assert summary["evaluators"] == [{"type": "word_limit", "max_words": 1},
                                     {"type": "regex", "pattern": "^1"}]
    assert set(summary["scores"]) == {"word_limit", "regex"}  # not the dataset's exact_match
    # A wrong one is named by ingest before anything runs; continuing a run takes none.
    specs.write_text("- type: word_limit\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "run", dataset_id, "--task",
        "tests.e2e.agent_task:answer", "--evaluators", str(specs), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "max_words" in err.decode(), err.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "run", "--run", run_id, "--task",
        "tests.e2e.agent_task:answer", "--evaluators", str(specs), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "only for a new run" in " ".join(err.decode().split())


async def test_run_an_async_agent_through_the_python_api(api, migrated):
    dataset_id = await _dataset(api)
    # run_dataset runs its own event loop, as in a script: here in a thread of its own.
    report = await asyncio.to_thread(
        run_dataset, dataset_id, answer_async, name="async agent", concurrency=16,
        ingest_url=f"http://127.0.0.1:{migrated.ingest_port}",
        query_url=f"http://127.0.0.1:{migrated.query_port}", api_key=migrated.api_keys[0])
    assert (report.items, report.succeeded, report.posted) == (N, N, N)
    summary = await api.eventually(f"/v1/runs/{report.run_id}",
                                   lambda s: s["scores"].get("exact_match", {}).get("count") == N)
    assert summary["scores"]["exact_match"]["pass_rate"] == 1.0
    scoring = (await api.query.get(f"/v1/runs/{report.run_id}/scoring")).json()
    assert scoring["scored"] is True and scoring["missing_items"] == 0


async def test_an_item_past_the_timeout_fails_and_the_command_does_not_wait_for_it(api, migrated):
    dataset_id = await _dataset(api)
    # The agent hangs for a minute on item 3: the command is done long before (its own
    # timeout, 30 s, would fail the test), with that item failed.
    out = await evalstream_command(_env(migrated), "run", dataset_id, "--task",
                                   "tests.e2e.agent_task:answer_slowly_on_3", "--limit", "6",
                                   "--timeout", "0.5", timeout=30)
    run_id = out.strip().splitlines()[-1]
    failed = await api.eventually(f"/v1/runs/{run_id}/results?status=failed",
                                  lambda r: r["total"] == 1)
    assert failed["items"][0]["dataset_item_id"].endswith("-03")
    assert failed["items"][0]["error"] == "TimeoutError: no answer within 0.5 s"
