"""Calls that must all end by a batch's deadline: the LLM judge's and async plugin evaluators'."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


async def within_deadline(calls: list[Awaitable[T]], deadline_s: float,
                          late: Callable[[], BaseException]) -> list[T | BaseException]:
    """Every call's result or exception, in order; a call still running `deadline_s` after the
    start is cancelled and answered with `late()`."""
    if not calls:
        return []
    tasks = [asyncio.ensure_future(call) for call in calls]
    _, unfinished = await asyncio.wait(tasks, timeout=deadline_s)
    for task in unfinished:
        task.cancel()
    if unfinished:
        await asyncio.wait(unfinished)
        log.warning("%d call(s) still running at the batch deadline of %s s were cancelled",
                    len(unfinished), deadline_s)
    return [late() if task in unfinished else task.exception() or task.result()
            for task in tasks]
