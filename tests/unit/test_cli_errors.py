"""The `evalstream` command without the URLs an operation needs: one line that names the setting,
exit code 2; with a broker or database that does not answer: one line naming it, exit code 3; no
traceback either way."""

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


@pytest.mark.parametrize(("argv", "env", "dependency"), [
    (["projections", "schemas"], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/x"},
     "Postgres"),
    (["status"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, "the broker"),
])
def test_a_dependency_that_does_not_answer_is_named_in_one_line(monkeypatch, capsys, argv, env,
                                                                dependency):
    for name, value in env.items():  # port 9 (discard): nothing listens there
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["evalstream", *argv])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith(f"evalstream: {dependency} is unreachable (") and "Traceback" not in err
