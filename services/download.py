"""`evalstream download DATASET`: a dataset's items as JSON Lines, in the form `evalstream upload`
reads (`id`, `input`, `expected_output`, `metadata`), page by page from the query API — to keep a
dataset in version control, or to move it to another deployment."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from services.client import QueryApi

FIELDS = ("id", "input", "expected_output", "metadata")


def download(api: QueryApi, dataset_id: str, out: TextIO,
             on_progress: Callable[[int, int], object] = lambda done, total: None) -> int:
    """Write every item of the dataset to `out`, one JSON object a line in id order; returns
    how many. `on_progress(items written, total)` after each page."""
    written = 0
    for page in api.pages(f"/v1/datasets/{dataset_id}/items"):
        for item in page["items"]:
            out.write(json.dumps({k: item[k] for k in FIELDS if item.get(k) is not None},
                                 ensure_ascii=False) + "\n")
        written += len(page["items"])
        on_progress(written, page["total"])
    return written
