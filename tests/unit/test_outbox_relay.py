"""The outbox relay outlives a broker or database outage with waits that double up to half a
minute (services/ingest/outbox.py: run_relay), instead of a warning every second."""

from __future__ import annotations

import asyncio

import pytest

from services.ingest import outbox


class Listener:
    async def add_listener(self, *_):
        pass

    async def remove_listener(self, *_):
        pass


class Pool:
    async def acquire(self):
        return Listener()

    async def release(self, _):
        pass


async def test_failed_attempts_wait_longer_each_time_and_success_resets(monkeypatch):
    outcomes = [ConnectionRefusedError("down")] * 14 + [3, 0] + [ConnectionRefusedError("down")]
    waits: list[float] = []

    async def relay_once(pool, publisher):
        if not outcomes:
            raise asyncio.CancelledError
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(outbox, "relay_once", relay_once)
    with pytest.raises(asyncio.CancelledError):
        await outbox.run_relay(Pool(), publisher=None, idle_wait=0.01, sleep=sleep)
    # 1, 2, 4, … × the idle wait, capped at 30 s; after the relay worked again, the next
    # failure waits the least again.
    assert waits == pytest.approx([0.01 * 2 ** n for n in range(12)] + [30, 30, 0.01])
