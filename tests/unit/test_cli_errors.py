"""The `evalstream` command without the URLs an operation needs: one line that names the setting,
exit code 2, no traceback."""

from __future__ import annotations

import sys

import pytest

from services import cli


@pytest.mark.parametrize(("argv", "missing"), [
    (["projections", "schemas"], "DATABASE_URL"),
    (["replay", "--run", "r1"], "KAFKA_BOOTSTRAP_SERVERS"),
])
def test_a_missing_url_is_named_in_one_line(monkeypatch, capsys, argv, missing):
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["evalstream", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evalstream: {missing} is not set;") and "Traceback" not in err
