"""`evalstream compare`, `show`, `runs` and `datasets` against the running services: a run against
a baseline run given on the command line and against its dataset's pinned baseline — the
summaries, each score's change with its better/worse/same counts, and the items that regressed,
improved and changed status, with their outputs, as the query API's comparison has them —; one
run's summary and the items to look at; and the lists to find the ids in."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest

from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def test_compare_a_run_with_a_baseline_in_the_terminal(api, migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "input": f"q{n}", "expected_output": f"a{n}",
              "metadata": {"level": "easy" if n < 3 else "hard"}} for n in range(5)]
    dataset_id = await api.dataset_with_items(items)
    baseline = await api.run_with_outputs(dataset_id, items, ["a0", "a1", "x", "a3", "a4"],
                                          name="v1")
    # v2: item 1 regresses, item 2 improves, item 4's trace failed.
    run = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "v2"}))["id"]
    await api.post_traces([
        {"trace_id": f"{run}-{n}", "run_id": run, "dataset_item_id": item["id"],
         "output": out, "status": "failed" if out is None else "succeeded",
         **({"error": "TimeoutError: no answer"} if out is None else {})}
        for n, (item, out) in enumerate(zip(items, ["a0", "nope", "a2", "a3", None],
                                            strict=True))])
    for r in (baseline, run):
        await api.eventually(f"/v1/runs/{r}/scoring", lambda s: s["scored"])

    out = await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "compare", run, baseline, "--items", "5")
    lines = out.splitlines()
    assert lines[0].startswith(f"dataset dataset ({dataset_id}): run v2 ({run}) against "
                               f"baseline v1 ({baseline})")
    assert [w for w in next(x for x in lines if x.startswith("pass rate")).split()] == [
        "pass", "rate", "80.0%", "75.0%", "-5.0", "pts"]
    assert next(x for x in lines if x.startswith("items failed")).split() == [
        "items", "failed", "0", "1"]
    # exact_match: 4 of 5 pass, then 3 of 4; one item better, one worse, two the same.
    # The change's 95% interval over the four items both scored (0, -1, +1, 0): all of ±100.
    assert next(x for x in lines if x.startswith("exact_match")).split() == [
        "exact_match", "80.0%", "(avg", "0.800)", "75.0%", "(avg", "0.750)", "-5.0", "pts",
        "-100.0", "…", "+100.0", "1", "1", "2"]
    at = lines.index("regressions: 1")
    assert lines[at + 1].split() == [f"{prefix}-1", "exact_match", "1", "→", "0", '"a1"', "→",
                                     '"nope"']
    at = lines.index("improvements: 1")
    assert lines[at + 1].split() == [f"{prefix}-2", "exact_match", "0", "→", "1", '"x"', "→",
                                     '"a2"']
    at = lines.index("status changed: 1")
    assert lines[at + 1].split()[:4] == [f"{prefix}-4", "succeeded", "→", "failed"]
    assert lines[at + 1].endswith('"a4" → failed: "TimeoutError: no answer"')

    # One run alone: its summary and the items to look at.
    lines = (await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "show", run)).splitlines()
    assert lines[0].startswith(f"run v2 ({run}) of dataset dataset ({dataset_id})")
    assert "items         4 completed, 1 failed, 0 missing, of 5" in lines
    assert next(x for x in lines if x.startswith("exact_match")).split() == [
        "exact_match", "75.0%", "0.750", "4"]
    at = lines.index("items a score failed on: 1")
    assert lines[at + 1].split() == [f"{prefix}-1", "exact_match", "Fail", "output", '"nope",',
                                     "expected", '"a1"']
    at = lines.index("items whose trace failed: 1")
    assert lines[at + 1] == f'  {prefix}-4  error "TimeoutError: no answer"'

    # ... the same as Markdown (a pull request's comment, a job's summary)
    md = (await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "show", run, "--markdown")).splitlines()
    assert md[0].startswith(f"### Run v2 ({run}) of dataset dataset ({dataset_id})")
    assert "| items | 4 completed, 1 failed, 0 missing, of 5 |" in md
    assert "| exact_match | 75.0% | 0.750 | 4 |" in md
    at = md.index("**items a score failed on: 1**")
    assert md[at + 2:at + 5] == ["| item | failed | output |", "|---|---|---|",
                                 f'| {prefix}-1 | exact_match Fail | output "nope", expected '
                                 '"a1" |']
    assert f'| {prefix}-4 |  | error "TimeoutError: no answer" |' in md

    # ... and per value of a metadata key.
    lines = (await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "show", run, "--by", "item.level", "--items", "0")).splitlines()
    at = next(n for n, x in enumerate(lines) if x.startswith("item.level"))
    assert [x.split() for x in lines[at:at + 3]] == [
        ["item.level", "items", "failed", "pass", "rate", "exact_match"],
        ["easy", "3", "0", "66.7%", "66.7%"], ["hard", "2", "1", "100.0%", "100.0%"]]

    # The same as GitHub Markdown, for a pull request's comment.
    md = (await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "compare", run, baseline, "--markdown")).splitlines()
    assert md[0] == "### Run v2 against baseline v1"
    assert "| pass rate | 80.0% | 75.0% | -5.0 pts |" in md
    assert ("| exact_match | 80.0% (avg 0.800) | 75.0% (avg 0.750) | -5.0 pts "
            "| -100.0 … +100.0 | 1 | 1 | 2 |") in md
    at = md.index("**regressions: 1**")
    assert md[at + 2:at + 5] == ["| item | change | baseline | run |", "|---|---|---|---|",
                                 f'| {prefix}-1 | exact_match 1 → 0 | "a1" | "nope" |']
    assert f'| {prefix}-4 | succeeded → failed | "a4" | failed: "TimeoutError: no answer" |' \
        in md

    # With no items listed: the counts alone.
    out = await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "compare", run, baseline, "--items", "0")
    assert out.rstrip().endswith("regressions: 1\n\nimprovements: 1\n\nstatus changed: 1")

    # Without a baseline: the dataset's pinned one; --json has the whole comparison.
    r = await api.ingest.put(f"/v1/datasets/{dataset_id}/baseline", json={"run_id": baseline})
    assert r.status_code == 200, r.text
    await api.eventually(f"/v1/datasets/{dataset_id}", lambda d: d["baseline_run_id"] == baseline)
    report = json.loads(await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"},
        "compare", run, "--json"))
    assert report["baseline"] == baseline
    assert [i["dataset_item_id"] for i in report["regressions"]["items"]] == [f"{prefix}-1"]

    # What there is, to find those ids: the dataset's runs, newest first, and the datasets.
    env = settings_env(migrated) | {
        "EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"}
    listed = (await evalstream_command(env, "runs", dataset_id)).splitlines()
    assert listed[0].split() == ["id", "name", "started", "items", "failed", "pass", "rate",
                                 "exact_match"]
    assert [line.split()[:2] + line.split()[-4:] for line in listed[1:]] == [
        [run, "v2", "5/5", "1", "75.0%", "75.0%"], [baseline, "v1", "5/5", "0", "80.0%", "80.0%"]]
    # A name two datasets have is refused, naming both.
    twins = [await api.dataset_with_items([{"id": "x", "input": 1}], name=f"twin {prefix}")
             for _ in range(2)]
    for twin in twins:
        await api.eventually(f"/v1/datasets/{twin}", lambda d: d["item_count"] == 1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "runs", f"twin {prefix}", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"2 datasets are named 'twin {prefix}'; give one's id:" in err.decode()
    assert all(t in err.decode() for t in twins)
    listed = (await evalstream_command(env, "datasets", "--limit", "1000")).splitlines()
    ours = next(line for line in listed if line.startswith(dataset_id)).split()
    assert ours[2:5] == ["5", "2", baseline]
