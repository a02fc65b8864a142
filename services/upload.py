"""`evalstream upload FILE`: a dataset's items from a JSON Lines or CSV file, through the ingest
API, 1,000 per call (its limit), with a progress bar.

- JSON Lines (`.jsonl`, `.ndjson`): one object per line, as `POST /v1/datasets/{id}/items` takes
  an item: `input`, and optionally `id`, `expected_output`, `metadata`.
- CSV (`.csv`, a header row): columns `input`, and optionally `id` and `expected_output`, as text;
  every other column goes into the item's `metadata` (by its header), empty cells left out.

The whole file is read and checked first: a wrong line stops the upload before anything is sent,
naming the line. Each call is all or none; should one fail later (the API refusing an item, or
unreachable), the items of the calls before it are in the dataset, and the error says which
lines were sent, so that the rest can be uploaded from there (upserts by id repeat harmlessly).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from pydantic import ValidationError

from services.client import first_error, refusal
from services.ingest.commands import ItemIn

CHUNK = 1000
_CSV_FIELDS = ("id", "input", "expected_output")


class UploadError(RuntimeError):
    """The upload stopped; the message names the line (and what was sent before)."""


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise UploadError(f"{path}:{number}: not JSON: {e.msg}") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "input" not in reader.fieldnames:
            raise UploadError(f"{path}:1: the header row needs an `input` column")
        for row in reader:
            item: dict = {k: row[k] for k in _CSV_FIELDS if row.get(k) not in (None, "")}
            metadata = {k: v for k, v in row.items()
                        if k not in _CSV_FIELDS and k is not None and v not in (None, "")}
            if metadata:
                item["metadata"] = metadata
            yield reader.line_num, item


def read_items(path: Path) -> list[tuple[int, dict]]:
    """Every item of the file with its line number, checked as the API checks one; UploadError
    naming the first wrong line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _json_lines(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    else:
        raise UploadError(f"{path}: give a .jsonl, .ndjson or .csv file")
    items = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise UploadError(f"{path}:{number}: an item is a JSON object")
        try:
            item = ItemIn.model_validate(row)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise UploadError(f"{path}:{number}: {where}: {first['msg']}") from None
        items.append((number, item.model_dump(exclude_none=True)))
    if not items:
        raise UploadError(f"{path}: no items")
    return items


def upload(client: httpx.Client, dataset_id: str, items: list[tuple[object, dict]],
           on_chunk: Callable[[int], object] = lambda n: None, unit: str = "line") -> list[str]:
    """Send the items in calls of CHUNK; returns their ids (as the API gave them). Each item
    comes with what names it in an error (its line of the file; `unit` says what that is)."""
    ids: list[str] = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        sent = (f"{unit}s up to {items[start - 1][0]} are in the dataset" if start
                else "nothing was sent")
        try:
            r = client.post(f"/v1/datasets/{dataset_id}/items",
                            json={"items": [item for _, item in chunk]})
        except httpx.HTTPError as e:
            raise UploadError(f"ingest API unreachable ({e}); {sent}") from None
        if r.status_code != 201:
            raise UploadError(f"{_refusal(r, chunk, unit)}; {sent}")
        ids += r.json()["ids"]
        on_chunk(len(chunk))
    return ids


def _refusal(r: httpx.Response, chunk: list[tuple[object, dict]], unit: str) -> str:
    """The API's answer, with an item's position in the call turned into what names it."""
    loc, msg = first_error(r)
    if len(loc) >= 3 and loc[:2] == ["body", "items"] and loc[2].isdigit() \
            and int(loc[2]) < len(chunk):
        field = ".".join(loc[3:]) or "item"
        return f"{unit} {chunk[int(loc[2])][0]}: {field}: {msg} (HTTP {r.status_code})"
    return refusal(r)
