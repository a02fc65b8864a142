"""Scoring rules end to end: a rule set through the ingest API (or `evalstream rules`) scores the
production traces it selects — by metadata, a sampled share by trace id — through the real
evaluator and projections, and the query API shows their scores; traces it does not select, and
traces posted while it is disabled or after it is deleted, get none."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest

from services.ingest.scoring_rules import sample_point
from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def _put_rule(api, name: str, body: dict, status: int = 200) -> dict:
    r = await api.ingest.put(f"/v1/scoring-rules/{name}", json=body)
    assert r.status_code == status, r.text
    return r.json()


async def _delete_rule(api, name: str) -> None:
    r = await api.ingest.delete(f"/v1/scoring-rules/{name}")
    assert r.status_code == 202, r.text


def _scores(trace: dict) -> dict[str, float]:
    return {s["name"]: s["value"] for s in trace["scores"]}


async def test_a_rule_scores_the_production_traces_it_selects(api):
    tag = uuid.uuid4().hex[:8]
    caps, short = f"caps_{tag}", f"short_{tag}"
    rule = await _put_rule(api, f"format-{tag}", {
        "evaluators": [{"type": "regex", "pattern": "^[A-Z]", "name": caps},
                       {"type": "json_schema", "name": short,
                        "schema": {"type": "string", "maxLength": 20}}],
        "where": {"suite": tag, "env": ["prod", "staging"]}})
    assert (rule["sample_rate"], rule["enabled"]) == (1.0, True)
    try:
        traces = {
            f"{tag}-prod": ({"suite": tag, "env": "prod"}, "Paris", "succeeded"),
            f"{tag}-staging": ({"suite": tag, "env": "staging"},
                               "paris is the capital of france", "succeeded"),
            f"{tag}-dev": ({"suite": tag, "env": "dev"}, "Paris", "succeeded"),
            f"{tag}-other": ({"env": "prod"}, "Paris", "succeeded"),
            f"{tag}-failed": ({"suite": tag, "env": "prod"}, None, "failed"),
        }
        await api.post_traces([{"trace_id": t, "output": out, "status": status,
                                "metadata": metadata}
                               for t, (metadata, out, status) in traces.items()])
        prod = await api.eventually(f"/v1/traces/{tag}-prod", lambda t: len(t["scores"]) == 2)
        assert _scores(prod) == {caps: 1.0, short: 1.0}
        assert prod["run_id"] is None and prod["metadata"] == {"suite": tag, "env": "prod"}
        staging = await api.eventually(f"/v1/traces/{tag}-staging",
                                       lambda t: len(t["scores"]) == 2)
        assert _scores(staging) == {caps: 0.0, short: 0.0}
        assert next(s for s in staging["scores"] if s["name"] == short)["comment"] == \
            "$: 'paris is the capital of france' is too long"
        # The others are in the read model, unscored (a failed trace is never scored).
        for t in (f"{tag}-dev", f"{tag}-other", f"{tag}-failed"):
            assert (await api.eventually(f"/v1/traces/{t}", lambda _: True))["scores"] == []
    finally:
        await _delete_rule(api, f"format-{tag}")


async def test_a_rule_scores_a_sample_chosen_by_trace_id_until_disabled_or_deleted(api):
    tag = uuid.uuid4().hex[:8]
    name, score = f"sampled-{tag}", f"sampled_{tag}"
    body = {"evaluators": [{"type": "regex", "pattern": ".", "name": score}],
            "sample_rate": 0.3, "where": {"suite": tag}}
    await _put_rule(api, name, body)
    try:
        ids = [f"{tag}-{n}" for n in range(200)]
        await api.post_traces([{"trace_id": t, "output": "x", "status": "succeeded",
                                "metadata": {"suite": tag}} for t in ids])
        expected = {t for t in ids if sample_point(t) < 0.3}
        assert 35 < len(expected) < 85  # ~60: a sample, not all or none

        def scored_set(page: dict) -> set[str]:
            return {i["trace_id"] for i in page["items"] if i["scores"]}

        listed = await api.eventually(
            f"/v1/traces?by=trace.suite&group={tag}&limit=1000",
            lambda p: p["total"] == 200 and scored_set(p) == expected, timeout=30)
        assert all(_scores(i) == {score: 1.0} for i in listed["items"] if i["scores"])

        # Disabled, the rule selects nothing; enabled again, it does. Another enabled rule may
        # use its score name meanwhile, not while both are enabled.
        await _put_rule(api, name, body | {"enabled": False})
        clash = {"evaluators": [{"type": "exact_match", "name": score}]}
        await _put_rule(api, f"other-{tag}", clash)
        await _delete_rule(api, f"other-{tag}")
        await api.post_traces([{"trace_id": f"{tag}-off-{n}", "output": "x",
                                "status": "succeeded", "metadata": {"suite": tag}}
                               for n in range(20)])
        await _put_rule(api, name, body | {"sample_rate": 1.0})
        refused = await _put_rule(api, f"other-{tag}", clash, status=422)
        assert refused["detail"][0]["loc"] == ["body", "evaluators", 0, "name"]
        assert f"enabled rule '{name}'" in refused["detail"][0]["msg"]
        await api.post_traces([{"trace_id": f"{tag}-on", "output": "x", "status": "succeeded",
                                "metadata": {"suite": tag}}])
        await api.eventually(f"/v1/traces/{tag}-on", lambda t: _scores(t) == {score: 1.0})
        await asyncio.sleep(1.0)  # the disabled rule's traces were posted before that one
        off = await api.eventually(f"/v1/traces?by=trace.suite&group={tag}&limit=1000",
                                   lambda p: p["total"] == 221)
        assert not [i["trace_id"] for i in off["items"]
                    if i["trace_id"].startswith(f"{tag}-off-") and i["scores"]]
    finally:
        await _delete_rule(api, name)
    assert (await api.ingest.get(f"/v1/scoring-rules/{name}")).status_code == 404
    r = await api.ingest.delete(f"/v1/scoring-rules/{name}")
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "name"]
    await api.post_traces([{"trace_id": f"{tag}-after", "output": "x", "status": "succeeded",
                            "metadata": {"suite": tag}}])
    assert (await api.eventually(f"/v1/traces/{tag}-after", lambda _: True))["scores"] == []


async def test_rules_from_the_command_line(api, migrated, tmp_path):
    tag = uuid.uuid4().hex[:8]
    specs = tmp_path / "specs.yaml"
    specs.write_text(f"- type: contains\n  name: polite_{tag}\n  keywords: [please]\n")
    env = settings_env(migrated) | {
        "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{migrated.ingest_port}"}
    out = await evalstream_command(env, "rules", "set", f"polite-{tag}", "--evaluators",
                                   str(specs), "--sample-rate", "0.5", "--where", f"suite={tag}",
                                   "--where", "tier=2", "--where", "tier=3")
    assert f'polite-{tag}  yes      0.5     suite="{tag}", tier=2 | 3  polite_{tag} (contains)' \
        in out
    rule = (await api.ingest.get(f"/v1/scoring-rules/polite-{tag}")).json()
    assert rule["where"] == {"suite": tag, "tier": [2, 3]}
    assert rule["evaluators"] == [{"type": "contains", "name": f"polite_{tag}",
                                   "keywords": ["please"]}]
    assert f"polite-{tag}" in await evalstream_command(env, "rules")
    assert "deleted" in await evalstream_command(env, "rules", "delete", f"polite-{tag}")
    assert f"polite-{tag}" not in await evalstream_command(env, "rules")


async def test_a_new_rule_applied_to_traces_posted_before_it(api, migrated):
    """`evalstream replay --rule NAME --since 1h`: the traces the rule would have selected,
    scored with its evaluators, read from the log; the others, and run traces, left alone."""
    tag = uuid.uuid4().hex[:8]
    score = f"late_{tag}"
    ids = [f"{tag}-{n}" for n in range(40)]
    await api.post_traces([{"trace_id": t, "output": "x", "status": "succeeded",
                            "metadata": {"suite": tag, "env": "prod" if n % 2 else "dev"}}
                           for n, t in enumerate(ids)])
    for t in ids:  # all taken, none scored (no rule yet)
        assert (await api.eventually(f"/v1/traces/{t}", lambda _: True))["scores"] == []
    env = settings_env(migrated)
    name = f"late-{tag}"
    body = {"evaluators": [{"type": "regex", "pattern": "x", "name": score}],
            "sample_rate": 0.5, "where": {"suite": tag, "env": "prod"}}
    await _put_rule(api, name, body)
    try:
        out = await evalstream_command(env, "replay", "--rule", name, "--since", "1h",
                                       "--json", "--no-progress")
        expected = {t for n, t in enumerate(ids) if n % 2 and sample_point(t) < 0.5}
        assert 3 < len(expected) < 18
        report = json.loads(out)
        # Only traces outside runs: no run's trace of this session's other tests.
        assert report["requested"] == len(expected) and report["runs"] == {"": len(expected)}
        listed = await api.eventually(
            f"/v1/traces?by=trace.suite&group={tag}&limit=1000",
            lambda p: {i["trace_id"] for i in p["items"] if i["scores"]} == expected)
        assert all(_scores(i) == {score: 1.0} for i in listed["items"] if i["scores"])
    finally:
        await _delete_rule(api, name)
    # A deleted (or never set) rule is refused by name.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "replay", "--rule", name, "--no-progress",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and f"no scoring rule '{name}' in the log" in err.decode()
