"""Evaluators of a team's own, as a plugin: every service of the test stack loads this file
(EVALSTREAM_EVALUATOR_PLUGINS, tests/conftest.py: make_settings)."""

from __future__ import annotations

import asyncio

from pydantic import Field

from services.evaluator.plugins import Options, Score, evaluator


class WordLimitOptions(Options):
    max_words: int = Field(ge=1, description="Most words an answer may have.")


@evaluator("word_limit", version="1", options=WordLimitOptions)
def word_limit(case, options: WordLimitOptions):
    """At most `max_words` words: True / False, a boolean score."""
    return len(str(case.output).split()) <= options.max_words


@evaluator("tone", version="3")
def tone(case):
    """A label: a categorical score; no score for an empty output; a crash on "boom"."""
    text = str(case.output or "")
    if not text:
        return None
    if "boom" in text:
        raise RuntimeError("the tone model fell over")
    return Score(0.0, "categorical", string_value="shouting" if text.isupper() else "calm",
                 comment=f"{len(text)} characters")


@evaluator("length_share", version="1")
async def length_share(case):
    """Async, as one calling a service would be: the output's length over 20, at most 1."""
    await asyncio.sleep(0.01)
    return min(1.0, len(str(case.output or "")) / 20)
