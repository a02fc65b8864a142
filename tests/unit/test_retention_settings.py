"""EVALSTREAM_RETENTION__OUTSIDE_RUNS as people write it (30d, 12w, P30D, seconds), and the
durations the commands take (services.settings.parse_duration)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from services.settings import RetentionSettings, parse_duration


@pytest.mark.parametrize("text,expected", [
    ("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("24h", timedelta(days=1)),
    ("7d", timedelta(days=7)), ("2w", timedelta(days=14)), (" 1.5h ", timedelta(minutes=90)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "7 days", "d", "-1d", "1y", ""])
def test_what_is_not_a_duration_is_refused_saying_what_is(text):
    with pytest.raises(ValueError, match=r"is not a duration \(90s, 30m, 24h, 7d, 2w\)"):
        parse_duration(text)


@pytest.mark.parametrize("value,expected", [
    ("30d", timedelta(days=30)), ("12w", timedelta(weeks=12)), ("P30D", timedelta(days=30)),
    ("86400", timedelta(days=1)), (3600, timedelta(hours=1)), ("", None), (None, None),
])
def test_retention_as_people_write_it(value, expected):
    assert RetentionSettings(outside_runs=value).outside_runs == expected


def test_a_wrong_retention_names_the_forms():
    with pytest.raises(ValidationError, match="is not a duration"):
        RetentionSettings(outside_runs="a month")
    with pytest.raises(ValidationError, match="longer than 0"):
        RetentionSettings(outside_runs="-86400")  # a cut in the future would remove everything
    with pytest.raises(ValidationError, match="longer than 0"):
        RetentionSettings(outside_runs="0s")
    with pytest.raises(ValidationError):
        RetentionSettings(sweep_interval_s=0)
