"""A consumer's failed batch step is retried with backoff, then given back (services/messaging.py:
until_done)."""

from __future__ import annotations

import logging

import pytest

from services.messaging import until_done
from services.settings import RetrySettings

FAST = RetrySettings(backoff_s=0.001, backoff_max_s=0.004, window_s=5)


class Flaky:
    """Fails its first `failures` calls."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError(f"down (call {self.calls})")
        return "applied"


async def test_a_failing_step_is_retried_until_it_succeeds(caplog) -> None:
    step = Flaky(failures=3)
    with caplog.at_level(logging.WARNING, "services.messaging"):
        assert await until_done(step, "applying a batch", FAST) == "applied"
    assert step.calls == 4
    failed = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert [r.getMessage().split(":")[0] for r in failed] == [
        f"applying a batch failed (attempt {n})" for n in (1, 2, 3)]
    assert failed[0].exc_info is not None and failed[1].exc_info is None  # one traceback
    assert caplog.records[-1].getMessage() == "applying a batch succeeded at attempt 4"


async def test_a_step_given_as_a_lambda_is_awaited() -> None:
    # A lambda returning a coroutine is no coroutine function: its result must still be
    # awaited, not returned as if the step had succeeded.
    step = Flaky(failures=1)
    assert await until_done(lambda: step(), "applying a batch", FAST) == "applied"
    assert step.calls == 2


async def test_past_the_window_the_last_error_is_raised() -> None:
    step = Flaky(failures=10**9)
    policy = RetrySettings(backoff_s=0.01, backoff_max_s=0.02, window_s=0.1)
    with pytest.raises(ConnectionRefusedError, match="down"):
        await until_done(step, "applying a batch", policy)
    assert 2 <= step.calls < 20  # retried, with waits in between, and then given up
