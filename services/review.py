"""`evalstream review RUN`: a person goes through a run's items in the terminal and says, of each,
correct or incorrect (or which label of a rubric), with a comment — the verdicts
`POST /v1/scores` takes, without writing a request by hand.

The items come from the query API's results (by default those still awaiting a verdict of the
score's name: succeeded, with none yet), at most `limit` of them, read when the review starts.
Without a run (`--outside-runs`), the traces posted outside any run (production traffic), newest
first, since a given time. Each shows its input, expected output, output, error and scores. The
answer is `y` (correct) or `n` (incorrect) — with a rubric of labels, a label's number or name (a
categorical score) —, `s` (skip), `b` (back: the previous item again, to change its verdict) or
`q` (quit). A verdict is posted as soon as it is given, so quitting loses nothing; posting one
again corrects it (the API keeps the earlier value in the score's history).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.client import refusal

PAGE = 1000
SHOW_CHARS = 2000  # of a long input or output, shown in the terminal

Filter = str  # "awaiting" (no verdict of the name yet), "failed", "passed", "all"


class ReviewError(RuntimeError):
    """The review cannot start or go on; the message says why."""


@dataclass
class ReviewReport:
    run_id: str | None  # None: traces outside runs
    name: str
    items: int = 0  # items offered
    skipped: int = 0
    quit: bool = False
    # item -> the last verdict posted: True / False, or a rubric's label
    verdicts: dict[str, bool | str] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        return sum(v is True for v in self.verdicts.values())

    @property
    def incorrect(self) -> int:
        return sum(v is False for v in self.verdicts.values())

    def counts(self) -> str:
        """`2 correct, 1 incorrect`, or per label of a rubric: `2 partial, 1 wrong`."""
        if all(isinstance(v, bool) for v in self.verdicts.values()):
            return f"{self.correct} correct, {self.incorrect} incorrect"
        tally: dict[str, int] = {}
        for v in self.verdicts.values():
            tally[str(v)] = tally.get(str(v), 0) + 1
        return ", ".join(f"{n} {label}" for label, n in sorted(tally.items()))



def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    return text if len(text) <= SHOW_CHARS else f"{text[:SHOW_CHARS]}… ({len(text):,} chars)"


def describe(item: dict, position: str) -> str:
    """An item as the reviewer sees it."""
    lines = [f"── {position} · item {item['dataset_item_id'] or '-'} · trace {item['trace_id']}"
             f" · {item['status']}"
             + (f" · {item['latency_ms']:,.0f} ms" if item.get("latency_ms") is not None
                else "")]
    for label, key in (("input", "input"), ("expected", "expected_output"),
                       ("output", "output"), ("error", "error")):
        if item.get(key) is not None:
            body = _text(item[key]).replace("\n", "\n            ")
            lines.append(f"{label + ':':<11} {body}")
    scores = [f"{s['name']} {s.get('display_value') or s['value']}"
              + (f" ({s['comment']})" if s.get("comment") else "")
              for s in item.get("scores") or ()]
    if scores:
        lines.append(f"{'scores:':<11} " + " · ".join(scores))
    for f in item.get("evaluation_failures") or ():
        lines.append(f"{'failed:':<11} {f['name']}: {f['reason']}")
    if item.get("trace_url"):
        lines.append(f"{'trace:':<11} {item['trace_url']}")
    return "\n".join(lines)


def _answer(r: httpx.Response) -> dict:
    if r.status_code >= 400:
        raise ReviewError(f"{r.request.method} {r.request.url.path}: {refusal(r)}")
    return r.json()


def items_to_review(query: httpx.Client, run_id: str | None, name: str, which: Filter,
                    limit: int, since: str | None = None) -> list[dict]:
    """The run's items to offer, in item order, at most `limit`; without a run, the traces
    outside runs completed since `since` (ISO 8601), newest first."""
    params: dict[str, Any] = {"limit": min(PAGE, limit)}
    if run_id is None and since is not None:
        params["since"] = since
    if which == "awaiting":
        params |= {"filter": "unscored", "score": name, "status": "succeeded"}
    elif which in ("passed", "failed"):
        params |= {"filter": which}
    out: list[dict] = []
    offset: int | None = 0
    while offset is not None and len(out) < limit:
        try:
            page = _answer(query.get(f"/v1/runs/{run_id}/results" if run_id else "/v1/traces",
                                     params={**params, "offset": offset}))
        except httpx.HTTPError as e:
            raise ReviewError(f"query API unreachable: {e}") from None
        out += page["items"][:limit - len(out)]
        offset = page["next_offset"]
    return out


def review(query: httpx.Client, ingest: httpx.Client, run_id: str | None, *,
           ask: Callable[[str], str], show: Callable[[str], None], name: str = "manual",
           which: Filter = "awaiting", limit: int = 100, reviewer: str | None = None,
           labels: tuple[str, ...] = (), since: str | None = None) -> ReviewReport:
    """Offer the items one by one; `ask(prompt)` reads an answer, `show(text)` writes. With
    `labels` (a rubric: "correct", "partial", "wrong"), a verdict is one of them — a categorical
    score, answered by its number or its name — instead of correct / incorrect. Without
    `run_id`, the traces outside runs completed since `since`."""
    items = items_to_review(query, run_id, name, which, limit, since)
    report = ReviewReport(run_id=run_id, name=name, items=len(items))
    what = f"run {run_id}" if run_id else "traces outside runs" + (
        f" since {since}" if since else "")
    if not items:
        show(f"{what}: no item to review ({which})")
        return report
    verdicts = " · ".join(f"{n} {label}" for n, label in enumerate(labels, 1)) if labels \
        else "y correct · n incorrect"
    show(f"{what}: {len(items)} item(s) to review ({which}); "
         f"{verdicts} · s skip · b back · q quit")
    choices = {str(n): label for n, label in enumerate(labels, 1)} | {
        label.lower(): label for label in labels} if labels else {"y": True, "n": False}
    keys = "/".join([*(str(n) for n in range(1, len(labels) + 1))] if labels else ["y", "n"])
    n, seen = 0, set()
    while n < len(items):
        item = items[n]
        # A trace of the run outside its dataset's items, or outside runs, is named by its
        # trace id.
        key = ("dataset_item_id", item["dataset_item_id"]) \
            if run_id and item["dataset_item_id"] else ("trace_id", item["trace_id"])
        seen.add(key[1])
        show(describe(item, f"{n + 1}/{len(items)}"))
        choice = ""
        while choice not in choices and choice not in ("s", "b", "q"):
            choice = ask(f"{name}? [{keys}/s/b/q] ").strip().lower()
            choice = choice if labels and choice in choices else choice[:1]
        if choice == "q":
            report.quit = True
            break
        if choice == "b":
            n = max(0, n - 1)
            continue
        if choice == "s":
            n += 1
            continue
        comment = ask("comment (Enter for none): ").strip() or None
        verdict = choices[choice]
        body = {key[0]: key[1], "name": name, "value": verdict, "comment": comment} | (
            {"run_id": run_id} if run_id else {}) | (
            {"data_type": "categorical"} if labels else {})
        if reviewer:
            body["created_by"] = reviewer
        try:
            _answer(ingest.post("/v1/scores", json=body))
        except httpx.HTTPError as e:
            raise ReviewError(f"ingest API unreachable: {e}; the verdict on "
                              f"{key[1]} was not posted") from None
        report.verdicts[key[1]] = verdict
        n += 1
    report.skipped = len(seen - report.verdicts.keys())
    return report
