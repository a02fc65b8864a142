"""`evalstream upload` as a user runs it against the running services: a JSON Lines file of
2,500 items into a new dataset (three calls), a CSV file whose extra columns become metadata,
the dataset downloaded and uploaded again as a copy, and a file the API refuses part of, which
names the line and what was already sent."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import pytest

from tests.conftest import ROOT, evalstream_command, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


def _env(settings) -> dict[str, str]:
    return {**settings_env(settings),
            "EVALSTREAM_INGEST_URL": f"http://127.0.0.1:{settings.ingest_port}"}


async def _items(api, dataset_id: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    offset: int | None = 0
    while offset is not None:
        page = (await api.query.get(f"/v1/datasets/{dataset_id}/items",
                                    params={"limit": 1000, "offset": offset})).json()
        out |= {i["id"]: i for i in page["items"]}
        offset = page["next_offset"]
    return out


async def test_upload_a_jsonl_and_a_csv_file(api, migrated, tmp_path):
    prefix = uuid.uuid4().hex[:8]
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"{prefix}-{n}", "input": {"q": n},
                                         "expected_output": str(n),
                                         "metadata": {"bucket": n % 3}}) + "\n"
                             for n in range(2500)))
    out = await evalstream_command(_env(migrated), "upload", str(jsonl),
                                   "--name", f"upload {prefix}")
    dataset_id = out.split()[1].rstrip(":")
    assert "2,500 item(s)" in out
    await api.eventually(f"/v1/datasets/{dataset_id}/items", lambda p: p["total"] == 2500)
    by_id = await _items(api, dataset_id)
    assert len(by_id) == 2500
    assert {k: by_id[f"{prefix}-2000"][k] for k in ("input", "expected_output", "metadata")} == {
        "input": {"q": 2000}, "expected_output": "2000", "metadata": {"bucket": 2}}

    csv_file = tmp_path / "more.csv"
    csv_file.write_text("id,input,expected_output,category\n"
                        f"{prefix}-c1,\"Capital of France, please?\",Paris,geo\n"
                        f"{prefix}-c2,2+2,4,\n")
    out = await evalstream_command(_env(migrated), "upload", str(csv_file),
                                   "--dataset", dataset_id)
    assert f"dataset {dataset_id}: 2 item(s)" in out
    await api.eventually(f"/v1/datasets/{dataset_id}/items", lambda p: p["total"] == 2502)
    by_id = await _items(api, dataset_id)
    assert by_id[f"{prefix}-c1"]["input"] == "Capital of France, please?"
    assert by_id[f"{prefix}-c1"]["metadata"] == {"category": "geo"}
    assert by_id[f"{prefix}-c2"]["metadata"] in (None, {})

    # With evaluators, of a plugin's type too (ingest checks them; this client has no plugin).
    specs = tmp_path / "specs.yaml"
    specs.write_text("- type: word_limit\n  max_words: 5\n- type: exact_match\n")
    client_env = {k: v for k, v in _env(migrated).items()
                  if k != "EVALSTREAM_EVALUATOR_PLUGINS"}
    out = await evalstream_command(client_env, "upload", str(csv_file), "--name",
                                   f"judged {prefix}", "--evaluators", str(specs))
    judged = out.split()[1].rstrip(":")
    found = await api.eventually(f"/v1/datasets/{judged}", lambda d: d["item_count"] == 2)
    assert found["evaluators"] == [{"type": "word_limit", "max_words": 5},
                                   {"type": "exact_match"}]
    specs.write_text("- type: word_limit\n  max_words: 0\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "upload", str(csv_file), "--dataset", judged,
        "--evaluators", str(specs), env=client_env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "upload stopped: setting the dataset's evaluators: HTTP 422: body.0: Value error, " \
           "max_words: Input should be greater than or equal to 1" in err.decode()

    # Downloaded (by its name) and uploaded into a new dataset: the same items.
    env = _env(migrated) | {"EVALSTREAM_QUERY_URL": f"http://127.0.0.1:{migrated.query_port}"}
    lines = (await evalstream_command(env, "download", f"upload {prefix}")).splitlines()
    assert len(lines) == 2502
    assert json.loads(lines[0]) == {"id": f"{prefix}-0", "input": {"q": 0},
                                    "expected_output": "0", "metadata": {"bucket": 0}}
    copy = tmp_path / "copy.jsonl"
    await evalstream_command(env, "download", dataset_id, "-o", str(copy))
    assert copy.read_text().splitlines() == lines
    out = await evalstream_command(_env(migrated), "upload", str(copy), "--name", f"copy {prefix}")
    copied = out.split()[1].rstrip(":")
    await api.eventually(f"/v1/datasets/{copied}/items", lambda p: p["total"] == 2502)
    assert {k: {f: v.get(f) or None for f in ("input", "expected_output", "metadata")}
            for k, v in (await _items(api, copied)).items()} == {
        k: {f: v.get(f) or None for f in ("input", "expected_output", "metadata")}
        for k, v in by_id.items()}


async def test_a_refused_line_is_named_with_what_was_sent(api, migrated, tmp_path):
    prefix = uuid.uuid4().hex[:8]
    dataset_id = await api.dataset_with_items([{"id": f"{prefix}-x", "input": 0}])
    lines = [{"id": f"{prefix}-{n}", "input": n} for n in range(1200)]
    lines[1100]["id"] = lines[1050]["id"]  # the second call repeats an id: the API refuses it
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "upload", str(path), "--dataset", dataset_id,
        env=_env(migrated), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()
    assert "line 1101: id:" in err.decode()
    assert "lines up to 1000 are in the dataset" in err.decode()
    await api.eventually(f"/v1/datasets/{dataset_id}/items", lambda p: p["total"] == 1001)
