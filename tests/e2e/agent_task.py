"""An agent for `evalstream run` in tests/e2e/test_run_command.py: it answers an item's input
`{"n": n}` with n as text (so exact_match passes) unless n is a multiple of 5 (a wrong answer),
raises on n = 7, as a model call that timed out would, and on n = 11 reports a usage the ingest
API refuses."""

from __future__ import annotations

import asyncio
import time

from services.runner import TaskResult


def answer(question: dict) -> TaskResult:
    n = question["n"]
    if n == 7:
        raise TimeoutError("the model did not answer within 30 s")
    if n == 11:  # usage named as one model API names it: the ingest API refuses the trace
        return TaskResult(output=str(n), usage={"prompt_tokens": 10})
    return TaskResult(output=str(n) if n % 5 else "wrong", usage={"input_tokens": 10,
                                                                  "output_tokens": 2},
                      cost=0.001, metadata={"model": "fake-1"})


async def answer_async(question: dict) -> str:
    await asyncio.sleep(0.001)
    return str(question["n"])



def answer_slowly_on_3(question: dict) -> str:
    """Hangs (a minute) on n = 3, as a model call that never returns would."""
    if question["n"] == 3:
        time.sleep(60)
    return str(question["n"])
