"""`evalstream monitor` and `evalstream trace` without a server: the window's times as the
options give them, the table per bucket with the totals, one trace's page, and options refused
before anything is asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from services import cli
from services.reports import (
    markdown_monitoring,
    parse_time,
    render_monitoring,
    render_trace,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text,expected", [
    ("24h", NOW - timedelta(hours=24)), ("90s", NOW - timedelta(seconds=90)),
    ("30m", NOW - timedelta(minutes=30)), ("7d", NOW - timedelta(days=7)),
    ("2w", NOW - timedelta(weeks=2)), ("1.5h", NOW - timedelta(minutes=90)),
    ("2026-02-28T10:00:00Z", datetime(2026, 2, 28, 10, tzinfo=UTC)),
    ("2026-02-28T10:00:00", datetime(2026, 2, 28, 10, tzinfo=UTC)),  # no zone: UTC
    ("2026-02-28T11:00:00+01:00", datetime(2026, 2, 28, 10, tzinfo=UTC)),
])
def test_times_are_iso_or_a_duration_before(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-3h", "2026-02-30T00:00:00Z"])
def test_other_times_say_what_is_taken(text):
    with pytest.raises(ValueError, match="neither an ISO 8601 time .* nor a duration"):
        parse_time(text, NOW)


def _figures(traces, failed, scored, failures, rate, scores):
    return {"traces": traces, "succeeded": traces - failed, "failed": failed,
            "scored_traces": scored, "evaluation_failures": failures, "pass_rate": rate,
            "scores": scores}


MONITORING = {
    "since": "2026-03-01T10:00:00+00:00", "until": "2026-03-01T12:00:00+00:00",
    "interval": "hour", "score": None,
    "buckets": [
        {"start": "2026-03-01T10:00:00+00:00", **_figures(4, 1, 3, 1, 0.75, {
            "exact_match": {"average": 0.75, "pass_rate": 0.75, "count": 4},
            "tone": {"average": None, "pass_rate": None, "count": 2,
                     "labels": {"loud": 1, "calm": 1}}})},
        {"start": "2026-03-01T11:00:00+00:00", **_figures(2, 0, 2, 0, 0.5, {
            "exact_match": {"average": 0.5, "pass_rate": 0.5, "count": 2}})}],
    "totals": _figures(6, 1, 5, 1, 0.6667, {
        "exact_match": {"average": 0.6667, "pass_rate": 0.6667, "count": 6},
        "tone": {"average": None, "pass_rate": None, "count": 2,
                 "labels": {"loud": 1, "calm": 1}}}),
}


def test_monitoring_is_a_row_per_bucket_then_the_totals():
    lines = render_monitoring(MONITORING).splitlines()
    assert lines[0] == "traces outside runs, 2026-03-01 10:00 to 2026-03-01 12:00 UTC, per hour"
    assert lines[2].split() == ["hour", "traces", "failed", "scored", "eval.", "failures",
                                "pass", "rate", "exact_match", "tone"]
    assert lines[3].split() == ["2026-03-01", "10:00", "4", "1", "3", "1", "75.0%", "75.0%",
                                "calm", "1,", "loud", "1"]
    assert lines[4].split() == ["2026-03-01", "11:00", "2", "0", "2", "0", "50.0%", "50.0%",
                                "—"]
    assert lines[5].split()[:7] == ["total", "6", "1", "5", "1", "66.7%", "66.7%"]
    assert len(lines) == 6


def test_an_empty_window_says_so_and_markdown_is_a_table():
    empty = {**MONITORING, "buckets": [], "totals": _figures(0, 0, 0, 0, None, {})}
    assert render_monitoring(empty).splitlines()[-1] == "(no trace outside runs in this window)"
    md = markdown_monitoring(MONITORING).splitlines()
    assert md[0].startswith("### Traces outside runs")
    assert md[2].startswith("| hour | traces |") and md[3].startswith("|---|")
    assert md[-1].startswith("| total | 6 | 1 | 5 | 1 | 66.7% |")


TRACE = {
    "trace_id": "t-1", "run_id": None, "dataset_id": None, "dataset_item_id": None,
    "run_item_id": "ri", "status": "succeeded", "error": None, "input": {"q": "hi"},
    "output": "Hello\nthere", "expected_output": None, "latency_ms": 1234.0,
    "input_tokens": 12, "output_tokens": 3, "cost": 0.0004,
    "completed_at": "2026-03-01T10:15:00+00:00", "metadata": {"model": "gpt-4o"},
    "item_metadata": None, "trace_url": "http://localhost:3000/observability?traceId=t-1",
    "scores": [
        {"name": "similarity", "value": 0.7, "data_type": "numeric", "source": "programmatic",
         "string_value": None, "comment": "close\nenough", "passed": False,
         "pass_threshold": 0.8},
        {"name": "tone", "value": 0.0, "data_type": "categorical", "source": "llm_judge",
         "string_value": "calm", "comment": None, "passed": None, "pass_threshold": None}],
    "evaluation_failures": [{"name": "judge", "evaluator": "llm_judge",
                             "reason": "TimeoutError: no answer"}],
}


def test_a_trace_shows_its_scores_failures_and_link():
    text = render_trace(TRACE)
    lines = text.splitlines()
    assert lines[0] == "trace t-1, outside any run"
    facts = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[2:8]}
    assert facts == {"status": "succeeded", "completed": "2026-03-01 10:15 UTC",
                     "latency": "1,234 ms", "tokens": "12 in, 3 out", "cost": "0.0004",
                     "metadata": '{"model": "gpt-4o"}'}
    assert 'input: {"q": "hi"}' in text and "output: Hello\nthere" in text
    assert "expected:" not in text
    similarity = next(line for line in lines if line.startswith("similarity"))
    assert similarity.split() == ["similarity", "0.7", "failed", "0.8", "programmatic",
                                  "close", "enough"]
    assert next(line for line in lines if line.startswith("tone")).split() == [
        "tone", "calm", "—", "llm_judge"]
    assert "evaluator failed: judge (llm_judge): TimeoutError: no answer" in lines
    assert lines[-1] == TRACE["trace_url"]
    in_run = render_trace({**TRACE, "run_id": "r1", "dataset_id": "d1",
                           "dataset_item_id": "i1", "scores": [], "evaluation_failures": []})
    assert in_run.startswith("trace t-1, run r1 (dataset d1, item i1)")
    assert "no score" in in_run.splitlines()


@pytest.mark.parametrize("args,option", [
    (["--since", "yesterday"], "--since"), (["--until", "soon"], "--until"),
    (["--by", "trace.model"], "--group"), (["--group", "a"], "--by"),
    (["--by", "item.category", "--group", "a"], "--by"),
    (["--by", "model", "--group", "a"], "--by"),
    (["--interval", "week"], "--interval"),
])
def test_monitor_refuses_wrong_options_before_asking(args, option):
    result = CliRunner().invoke(cli.app, ["monitor", *args,
                                          "--query-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert option in result.output
