"""`evalstream check`, the gate of a CI job, as a user runs it against the running services: it
waits for the run's traces and their scores, then passes, fails on a threshold or a regression
against a baseline run, or cannot tell."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest

from tests.conftest import ROOT, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _start_check(settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "check", *args, env=settings_env(settings),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _finished(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


async def _check(settings, *args: str) -> tuple[int, str, str]:
    return await _finished(await _start_check(settings, *args))


async def test_check_waits_for_the_scores_then_gates_on_pass_rates_and_regressions(api,
                                                                                  migrated):
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": city, "metadata": {"region": region}}
             for n, (city, region) in enumerate([("Paris", "north"), ("Berlin", "north"),
                                                 ("Rome", "south")])]
    dataset_id = await api.dataset_with_items(items)

    # The check starts before the run has a trace: it waits for all three and their scores.
    run_id = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "v1"}))["id"]
    waiting = await _start_check(migrated, run_id, "--min-pass-rate", "0.6",
                                 "--min", "exact_match=0.6", "--max-failures", "0",
                                 "--wait", "60")
    await asyncio.sleep(1.5)
    await api.post_traces([{"trace_id": f"{run_id}-{n}", "run_id": run_id,
                            "dataset_item_id": item["id"], "output": out, "status": "succeeded"}
                           for n, (item, out) in enumerate(zip(items, ["Paris", "Berlin", "Lyon"],
                                                               strict=True))])
    code, out, err = await _finished(waiting)
    assert "waiting: 3 item(s) of the dataset have no trace yet" in err
    scoring = (await api.query.get(f"/v1/runs/{run_id}/scoring")).json()
    assert scoring == {"run_id": run_id, "total_items": 3, "traced_items": 3,
                       "missing_items": 0, "missing_items_at_start": 0,
                       "items_pending_scoring": 0, "scored": True}
    assert code == 0, out + err
    assert "ok    pass rate: 0.666667 >= 0.6" in out
    assert "ok    evaluator failures: 0 <= 0" in out
    assert out.rstrip().endswith("passed (3 check(s))")
    # Without a baseline, --summary holds the run itself.
    summary = ROOT / f".pytest-summary-{prefix}.md"
    try:
        code, out, err = await _check(migrated, run_id, "--min-pass-rate", "0.6",
                                      "--summary", str(summary))
        md = summary.read_text().splitlines()
    finally:
        summary.unlink(missing_ok=True)
    assert code == 0, out + err
    assert md[0] == "## evalstream check ✅ passed (1 check(s)): run v1"
    assert md[8].startswith(f"### Run v1 ({run_id}) of dataset dataset")
    assert "| exact_match | 66.7% | 0.667 | 3 |" in md
    # Per region: the north passes, the south (its one item wrong) does not.
    code, out, err = await _check(migrated, run_id, "--min-pass-rate", "0.6",
                                  "--by", "item.region")
    assert code == 1, out + err
    assert "ok    pass rate of item.region=north: 1 >= 0.6" in out
    assert "FAIL  pass rate of item.region=south: 0 < 0.6" in out
    code, out, err = await _check(migrated, run_id, "--by", "region")
    assert code == 2 and "Invalid value for --by" in err  # told at once, before any wait

    # A second run: one item the baseline had right is now wrong, one wrong is right.
    second = await api.run_with_outputs(dataset_id, items, ["Paris", "Bonn", "Rome"], "v2")
    code, out, err = await _check(migrated, second, "--baseline", run_id, "--min-pass-rate",
                                  "0.6", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["passed"] is False
    assert [(c["what"], c["value"], c["passed"]) for c in report["checks"]] == [
        ("pass rate", pytest.approx(2 / 3), True),
        ("exact_match items regressed", 1, False)]
    # ... which a tolerance of one regression lets through; --summary appends the report, the
    # comparison with its regressed item among it, as Markdown (a CI job's summary page).
    summary = ROOT / f".pytest-summary-{prefix}.md"
    summary.write_text("# earlier steps\n")
    try:
        code, out, err = await _check(migrated, second, "--baseline", run_id,
                                      "--max-regressions", "1", "--summary", str(summary))
        assert code == 0, out + err
        md = summary.read_text().splitlines()
    finally:
        summary.unlink()
    assert md[:4] == ["# earlier steps", "## evalstream check ✅ passed (1 check(s)): run v2", "",
                      f"Run `{second}`, 3 item(s) scored, against baseline `{run_id}`."]
    assert "| ✅ | exact_match items regressed: 1 <= 1 |" in md
    assert ("| exact_match | 66.7% (avg 0.667) | 66.7% (avg 0.667) | +0.0 pts "
            "| -100.0 … +100.0 | 1 | 1 | 1 |") in md
    assert f'| {items[1]["id"]} | exact_match 1 → 0 | "Berlin" | "Bonn" |' in md
    # No Markdown without --summary: the terminal report is the same as ever.
    assert "✅" not in out
    # --significant: one item worse and one better of three is no drop beyond chance.
    code, out, err = await _check(migrated, second, "--baseline", run_id, "--significant")
    assert code == 0, out + err
    assert ("ok    exact_match pass rate fell: p-value, Holm-adjusted over 1 score(s): 0.5 "
            ">= 0.025") in out
    code, out, err = await _check(migrated, second, "--significant")
    assert code == 2 and "only with --baseline" in err

    # An unknown run: asked again for the length of the wait (at most 30 s), then believed.
    code, out, err = await _check(migrated, f"{prefix}-no-such-run", "--wait", "2")
    assert code == 2 and "not found" in err
    # A run that never gets its traces: undecided when the wait is over.
    empty = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "empty"}))["id"]
    code, out, err = await _check(migrated, empty, "--wait", "1")
    assert code == 2 and "not scored after 1 s: 3 item(s) of the dataset have no trace" in err
    # An item added to the dataset since the run started: missing from the run, not waited for.
    await api.create(f"/v1/datasets/{dataset_id}/items",
                     {"items": [{"id": f"{prefix}-late", "expected_output": "Oslo"}]})
    scoring = await api.eventually(f"/v1/runs/{run_id}/scoring",
                                   lambda s: s["missing_items"] == 1)
    assert scoring["scored"] is True and scoring["traced_items"] == scoring["total_items"] == 3
    code, out, err = await _check(migrated, run_id, "--min-pass-rate", "0.6", "--wait", "5")
    assert code == 0 and "waiting" not in err, out + err

    # A run started (over four items), then an item added to the dataset and another removed
    # from it: the run waits for the three items it started with that are still there, and for
    # nothing else (it has 3 traces of 4 items, and one item of the dataset has none).
    third = (await api.create("/v1/runs", {"dataset_id": dataset_id, "name": "v3"}))["id"]
    await api.create(f"/v1/datasets/{dataset_id}/items",
                     {"items": [{"id": f"{prefix}-later", "expected_output": "Bern"}]})
    r = await api.ingest.delete(f"/v1/datasets/{dataset_id}/items/{items[2]['id']}")
    assert r.status_code == 202, r.text
    await api.post_traces([{"trace_id": f"{third}-{n}", "run_id": third,
                            "dataset_item_id": item["id"], "output": out, "status": "succeeded"}
                           for n, (item, out) in enumerate(zip(
                               [*items[:2], {"id": f"{prefix}-late"}], ["Paris", "Berlin", "Oslo"],
                               strict=True))])
    scoring = await api.eventually(f"/v1/runs/{third}/scoring",
                                   lambda s: s["traced_items"] == 3
                                   and s["items_pending_scoring"] == 0)
    assert (scoring["total_items"], scoring["missing_items"], scoring["missing_items_at_start"],
            scoring["scored"]) == (4, 1, 0, True)  # the one missing: `-later`
    code, out, err = await _check(migrated, third, "--min-pass-rate", "0.6", "--wait", "5")
    assert code == 0 and "waiting" not in err, out + err


async def test_check_against_the_latest_run_on_a_branch(api, migrated):
    """`--baseline latest [--baseline-where branch=main]`: a pull request's run compared with
    the dataset's latest run before it (on main), with no run id kept anywhere."""
    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": city}
             for n, city in enumerate(["Paris", "Berlin"])]
    dataset_id = await api.dataset_with_items(items)
    main = await api.run_with_outputs(dataset_id, items, ["Paris", "Berlin"], "main",
                                      {"branch": "main", "ci": {"job": 1}})
    await api.eventually(f"/v1/runs/{main}/scoring", lambda s: s["scored"])
    feature = await api.run_with_outputs(dataset_id, items, ["Lyon", "Berlin"], "feature",
                                         {"branch": "feature-x"})
    await api.eventually(f"/v1/runs/{feature}/scoring", lambda s: s["scored"])
    pull = await api.run_with_outputs(dataset_id, items, ["Lyon", "Berlin"], "pull",
                                      {"branch": "feature-y"})

    # The latest run before it, whatever its branch: the feature run, no regression.
    code, out, err = await _check(migrated, pull, "--baseline", "latest", "--json")
    assert code == 0, out + err
    assert json.loads(out)["baseline"] == feature
    # The latest run on main: the item main had right regressed.
    code, out, err = await _check(migrated, pull, "--baseline", "latest",
                                  "--baseline-where", "branch=main", "--json")
    assert code == 1, out + err
    report = json.loads(out)
    assert report["baseline"] == main
    assert [(c["what"], c["value"]) for c in report["checks"]] == [
        ("exact_match items regressed", 1)]
    code, out, err = await _check(migrated, pull, "--baseline", "latest",
                                  "--baseline-where", "ci.job=1", "--baseline-where",
                                  "branch=main", "--json")
    assert code == 1 and json.loads(out)["baseline"] == main, out + err
    # Nothing to compare with, and wrong uses: told, exit 2.
    code, out, err = await _check(migrated, main, "--baseline", "latest")
    assert code == 2 and f"no run of dataset {dataset_id} started before run {main}" in err
    code, out, err = await _check(migrated, pull, "--baseline", "latest",
                                  "--baseline-where", "branch=release")
    assert code == 2 and "with branch=release started before" in err
    code, out, err = await _check(migrated, pull, "--baseline-where", "branch=main")
    assert code == 2 and "only with the baseline `latest`" in err
    code, out, err = await _check(migrated, pull, "--baseline", "latest",
                                  "--baseline-where", "main")
    assert code == 2 and "is not KEY=VALUE" in err

    # `evalstream compare` takes the same baseline (a pull request's comment).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "compare", pull, "latest", "--baseline-where",
        "branch=main", "--json", env=settings_env(migrated), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    code, out, err = await _finished(proc)
    assert code == 0, out + err
    compared = json.loads(out)
    assert compared["baseline"] == main
    assert compared["regressions"]["total"] == 1

    # The listing the check reads, over HTTP.
    async def listed(**params) -> list[str]:
        r = await api.query.get(f"/v1/datasets/{dataset_id}/runs", params=params)
        assert r.status_code == 200, r.text
        return [run["id"] for run in r.json()["runs"]]

    assert await listed() == [pull, feature, main]
    assert await listed(metadata="branch=main") == [main]
    assert await listed(metadata=["branch=main", "ci.job=2"]) == []
    started = (await api.query.get(f"/v1/runs/{pull}")).json()["started_at"]
    assert await listed(before=started) == [feature, main]
    r = await api.query.get(f"/v1/datasets/{dataset_id}/runs", params={"metadata": "branch"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "metadata"]
