"""A team's own evaluators as a plugin (tests/e2e/plugin_evaluators.py, which every service of the
test stack loads): ingest lists them and checks their specs, the evaluator scores with them, and
their scores, labels and failures reach the read models like the built-in ones'."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

PLUGIN = str(ROOT / "tests/e2e/plugin_evaluators.py")


async def test_a_plugins_evaluators_are_listed_checked_and_scored(api, migrated):
    listed = (await api.ingest.get("/v1/evaluators")).json()["evaluators"]
    by_type = {e["type"]: e for e in listed}
    assert (by_type["word_limit"]["version"], by_type["word_limit"]["plugin"]) == ("1", PLUGIN)
    assert by_type["word_limit"]["options"]["required"] == ["max_words"]
    assert (by_type["tone"]["version"], by_type["contains"]["plugin"]) == ("3", None)
    assert (by_type["length_share"]["async"], by_type["tone"]["async"]) == (True, False)

    # A plugin's spec is checked by ingest as a built-in one is: the field at fault is named.
    r = await api.ingest.post("/v1/datasets", json={"name": "d", "evaluators": [
        {"type": "exact_match"}, {"type": "word_limit", "max_words": 0}]})
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "evaluators", 1] and error["msg"].startswith(
        "Value error, max_words: Input should be greater than or equal to 1"), error
    r = await api.ingest.post("/v1/datasets", json={"name": "d", "evaluators": [
        {"type": "word_limits"}]})
    assert r.status_code == 422 and "unknown evaluator type 'word_limits' (did you mean " \
        "'word_limit'?)" in r.json()["detail"][0]["msg"], r.text

    prefix = uuid.uuid4().hex[:8]
    items = [{"id": f"{prefix}-{n}", "expected_output": "Paris"} for n in range(4)]
    dataset_id = await api.dataset_with_items(items, [
        {"type": "word_limit", "max_words": 2, "name": "short"}, {"type": "tone"},
        {"type": "exact_match"}, {"type": "length_share"}])
    run_id = await api.run_with_outputs(
        dataset_id, items, ["Paris", "PARIS, OF COURSE", "It is Paris boom", ""])
    summary = await api.eventually(
        f"/v1/runs/{run_id}/scoring", lambda s: s["scored"], timeout=60)
    summary = await api.eventually(f"/v1/runs/{run_id}",
                                   lambda s: s["scores"].get("short", {}).get("count") == 4)
    assert summary["scores"]["short"]["average"] == pytest.approx(0.5)  # 1, 0, 0, 1 ("" → 0 words)
    assert summary["scores"]["length_share"]["average"] == pytest.approx(
        (5 + 16 + 16 + 0) / 20 / 4)  # async: awaited by the evaluator, a batch's cases at once
    # The empty output has no tone; "boom" made it raise: two labels.
    assert summary["scores"]["tone"]["labels"] == {"calm": 1, "shouting": 1}
    results = {r["dataset_item_id"]: r for r in (await api.query.get(
        f"/v1/runs/{run_id}/results", params={"limit": 10})).json()["items"]}
    boom = results[f"{prefix}-2"]
    assert [(f["name"], f["evaluator_version"], f["reason"]) for f in boom["evaluation_failures"]
            ] == [("tone", "3", "RuntimeError: the tone model fell over")]
    shouting = next(s for s in results[f"{prefix}-1"]["scores"] if s["name"] == "tone")
    assert (shouting["display_value"], shouting["evaluator_version"], shouting["comment"]) == (
        "shouting", "3", "16 characters")

    # The command-line listing reads the same endpoint.
    out = await evalstream_command(settings_env(migrated) | {
        "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{migrated.ingest_port}"}, "evaluators")
    line = next(line for line in out.splitlines() if line.startswith("word_limit"))
    assert line.split()[:5] == ["word_limit", "1", "programmatic", PLUGIN, "max_words*"]


async def test_a_plugin_that_does_not_load_stops_the_service_with_its_reason(migrated, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import not_installed_anywhere\n")
    env = settings_env(migrated) | {"EVALSTREAM_EVALUATOR_PLUGINS": f"{PLUGIN},{broken}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "serve", "evaluator", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1] == (
        f"evalstream: evaluator plugin '{broken}' failed to load: ModuleNotFoundError: "
        "No module named 'not_installed_anywhere'")


async def test_specs_are_tried_on_outputs_without_a_run(api, migrated, fake_judge):
    r = await api.ingest.post("/v1/evaluators/try", json={"evaluators": [
        {"type": "regex", "pattern": r"^\d+$", "name": "digits"},
        {"type": "word_limit", "max_words": 1}, {"type": "llm_judge", "criteria": "correct"},
        {"type": "length_share", "pass_threshold": 0.8}, {"type": "tone"}],
        "cases": [{"output": "42", "expected_output": "42"},
                  {"output": "Paris, boom", "expected_output": "paris", "input": "Capital?"}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]

    def scores(result):
        return {s["name"]: (s["value"], s["label"], s["passed"]) for s in result["scores"]}

    assert scores(first) == {"digits": (1.0, None, True), "word_limit": (1.0, None, True),
                             "llm_judge": (1.0, None, True),  # the fake judge: output ⊇ expected
                             "length_share": (0.1, None, False), "tone": (0.0, "calm", None)}
    assert first["failures"] == []
    assert scores(second) == {"digits": (0.0, None, False), "word_limit": (0.0, None, False),
                              "llm_judge": (1.0, None, True),
                              "length_share": (pytest.approx(0.55), None, False)}
    assert second["failures"] == [{"name": "tone", "evaluator": "tone",
                                   "reason": "RuntimeError: the tone model fell over"}]

    # Wrong specs and cases are named as everywhere else.
    r = await api.ingest.post("/v1/evaluators/try", json={
        "evaluators": [{"type": "regex"}], "cases": [{"output": "x"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "evaluators", 0]
    assert "pattern" in r.json()["detail"][0]["msg"]
    r = await api.ingest.post("/v1/evaluators/try", json={
        "evaluators": [{"type": "exact_match"}], "cases": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "cases"]

    env = settings_env(migrated) | {
        "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{migrated.ingest_port}"}
    out = await evalstream_command(env, "evaluators", "try",
                                   r'{"type": "regex", "pattern": "^\\d+$"}',
                                   '{"type": "exact_match"}', "--output", "42", "--expected", "41")
    assert out.splitlines() == ['case 1: output "42", expected "41"',
                                "  regex        1  passed",
                                "  exact_match  0  failed"]
