"""`evalstream check RUN`: the gate a CI job runs once its agent has posted a run's traces. It waits
until the run is scored, then checks the run's pass rates (overall, and with --by in every group
of a metadata key), and the items that regressed against a baseline run, through the query API,
as a dashboard reads them.

Exit status: 0 every check is met, 1 one is not, 2 it could not tell (the run is unknown, the API
unreachable, or the run still not scored when the wait is over).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from services.client import ApiError, QueryApi
from services.projections.views import traced_enough


class CheckError(ApiError):
    """The check could not be decided; the message says why (`kind` as for ApiError: an API that
    could not answer, or the run still not scored when the wait was over: "refused")."""


# `--baseline pinned`: the dataset's own baseline run.
PINNED = "pinned"
# `--baseline latest`: the dataset's latest run started before the one checked (of those whose
# metadata matches `--baseline-where`).
LATEST = "latest"

# A run created a moment ago may not be in the read model yet (its RunStarted is on its way):
# "not found" is asked again for this long before it is believed.
NOT_FOUND_GRACE_S = 30.0


@dataclass(frozen=True)
class Check:
    """One threshold: `value` must be at least `limit`, or with `maximum` at most."""

    what: str
    value: float | int | None
    limit: float | int
    maximum: bool = False

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.limit if self.maximum else self.value >= self.limit

    def describe(self) -> str:
        if self.value is None:
            return f"{self.what}: none (needs {self.limit:g})"
        sign = ("<=" if self.passed else ">") if self.maximum else (">=" if self.passed else "<")
        return f"{self.what}: {self.value:g} {sign} {self.limit:g}"


@dataclass
class CheckReport:
    run_id: str
    run_name: str | None = None
    baseline: str | None = None
    items: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "run_name": self.run_name, "baseline": self.baseline,
                "items": self.items, "passed": self.passed,
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}


def parse_minimum(text: str) -> tuple[str, float]:
    """`exact_match=0.9` → ("exact_match", 0.9): a score name's least pass rate."""
    name, sep, value = text.rpartition("=")
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not sep or not name or not 0.0 <= rate <= 1.0:
        raise ValueError(f"--min {text!r}: expected <score name>=<pass rate from 0 to 1>, "
                         "e.g. exact_match=0.9")
    return name, rate


def waiting_for(scoring: dict, items: int | None) -> str | None:
    """What the run's scoring (GET /v1/runs/{id}/scoring) still waits for, or None once it is
    complete: every item the dataset held when the run started (or `items` items) has a trace,
    and the evaluator has reported on every succeeded one."""
    if items is not None and scoring["traced_items"] < items:
        return f"{scoring['traced_items']} of {items} items have a trace"
    if items is None and not traced_enough(scoring):
        return (f"{scoring['missing_items_at_start']} item(s) of the dataset have no trace "
                "yet")
    if scoring["items_pending_scoring"]:
        return f"{scoring['items_pending_scoring']} item(s) are being scored"
    return None


def group_label(by: str, value: object) -> str:
    """`item.category=math`; the group of the items with no value is `item.category=(none)`."""
    if value is None:
        return f"{by}=(none)"
    return f"{by}={value if isinstance(value, str) else json.dumps(value)}"


def evaluate(summary: dict, *, min_pass_rate: float | None, minimums: dict[str, float],
             comparison: dict | None = None, max_regressions: int = 0,
             max_failures: int | None = None, by: str | None = None,
             groups: list[dict] | None = None, significant: bool = False) -> list[Check]:
    """The checks on a scored run's summary (and on its comparison with a baseline, if given).
    An evaluator that failed on an item leaves no score there, so pass rates leave it out:
    `max_failures` bounds how many such failures the run may have.

    With `groups` (the run's breakdown `by` a metadata key), the pass rates must be met in every
    group too: the overall rate in each, and a score's in each group that has that score.

    Against a baseline, each score fails on more than `max_regressions` regressed items; with
    `significant`, instead, only when its pass rate fell by more than chance over the items both
    runs scored: its one-sided p-value of a fall, Holm-adjusted for the number of scores
    compared (holm), below SIGNIFICANCE — for one score, the same as the upper end of the 95%
    interval of its change being below 0."""
    checks = []
    if max_failures is not None:
        checks.append(Check("evaluator failures", summary["evaluation_failures"], max_failures,
                            maximum=True))
    if min_pass_rate is not None:
        checks.append(Check("pass rate", summary["pass_rate"], min_pass_rate))
    for name, limit in minimums.items():
        rate = (summary["scores"].get(name) or {}).get("pass_rate")
        checks.append(Check(f"{name} pass rate", rate, limit))
    for group in groups or []:
        label = group_label(by or "group", group["value"])
        if min_pass_rate is not None:
            checks.append(Check(f"pass rate of {label}", group["pass_rate"], min_pass_rate))
        for name, limit in minimums.items():
            if name in group["scores"]:
                checks.append(Check(f"{name} pass rate of {label}",
                                    group["scores"][name]["pass_rate"], limit))
    if comparison is not None:
        fell: dict[str, float] = {}
        for score in comparison["scores"]:
            ours = next(r for r in score["runs"] if r["run_id"] == summary["id"])
            if significant:
                p = (ours.get("paired") or {}).get("p_pass_rate_fell")
                if p is not None:  # a label-only score, or fewer than two items paired
                    fell[score["name"]] = p
            else:
                checks.append(Check(f"{score['name']} items regressed", ours["regressions"] or 0,
                                    max_regressions, maximum=True))
        for name, p in holm(fell).items():
            checks.append(Check(f"{name} pass rate fell: p-value, Holm-adjusted over "
                                f"{len(fell)} score(s)", round(p, 6), SIGNIFICANCE))
    return checks


# One-sided: a fall is what a gate looks for. 0.025 makes one score's test the same as the upper
# end of its two-sided 95% interval lying below 0 (ADR 0015).
SIGNIFICANCE = 0.025


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of p-values tested together, in the given order: with m
    tests, the smallest times m, the next times m - 1, ..., never below the one before (nor above
    1). Comparing each with the significance level keeps the chance of any false alarm among
    the m at that level, where m separate tests would each have it."""
    ranked = sorted(p_values.items(), key=lambda kv: kv[1])
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def latest_run_before(api: QueryApi, summary: dict, where: Sequence[str] = ()) -> str:
    """The id of the latest run of the summary's dataset started before it whose metadata has
    every KEY=VALUE of `where`; CheckError saying so when there is none."""
    page = api.get(f"/v1/datasets/{summary['dataset_id']}/runs", metadata=list(where),
                   before=summary["started_at"], limit="1")
    if not page["runs"]:
        matching = f" with {', '.join(where)}" if where else ""
        raise CheckError(f"no run of dataset {summary['dataset_id']}{matching} started before "
                         f"run {summary['id']}: nothing to compare with", "refused")
    return page["runs"][0]["id"]


def check_run(api: QueryApi, run_id: str, *, min_pass_rate: float | None = None,
              minimums: dict[str, float] | None = None, baseline: str | None = None,
              baseline_where: Sequence[str] = (),
              max_regressions: int = 0, max_failures: int | None = None,
              by: str | None = None, items: int | None = None, significant: bool = False,
              wait: float = 300.0,
              poll: float = 1.0, on_wait: Callable[[str], object] = lambda _: None,
              sleep: Callable[[float], object] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> CheckReport:
    """Wait up to `wait` seconds for the run to be scored, then check it. Meanwhile an API that
    cannot answer is asked again, and a run not found is for NOT_FOUND_GRACE_S."""
    started = clock()
    while True:
        try:
            scoring = api.scoring(run_id)
            pending = waiting_for(scoring, items)
        except ApiError as e:
            elapsed = clock() - started
            if not (e.kind == "unavailable" or (
                    e.kind == "not_found" and elapsed < min(wait, NOT_FOUND_GRACE_S))):
                raise
            pending = str(e)
        if pending is None:
            break
        if clock() - started >= wait:
            raise CheckError(f"run {run_id} not scored after {wait:g} s: {pending}")
        on_wait(pending)
        sleep(poll)
    summary = api.summary(run_id)
    if baseline == LATEST:
        baseline = latest_run_before(api, summary, baseline_where)
    report = CheckReport(run_id=run_id, run_name=summary["name"], baseline=baseline,
                         items=scoring["traced_items"])
    # "pinned": the dataset's baseline run (PUT /v1/datasets/{id}/baseline), which the query
    # API finds.
    comparison = api.comparison(None if baseline == PINNED else baseline,
                                run_id) if baseline else None
    if comparison is not None:
        report.baseline = comparison["baseline"]
    groups = api.breakdown(run_id, by) if by else None
    report.checks = evaluate(summary, min_pass_rate=min_pass_rate, minimums=minimums or {},
                             comparison=comparison, max_regressions=max_regressions,
                             max_failures=max_failures, by=by, groups=groups,
                             significant=significant)
    return report
