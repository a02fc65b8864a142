"""An evaluator deployment in which `contains` is version 2 (whole words only): what a team ships
after changing an evaluator's semantics. The replay test runs it in place of the evaluator
service (`python tests/e2e/evaluator_contains_v2.py`, same environment as `serve evaluator`)."""

from __future__ import annotations

import dataclasses
import re

from services.evaluator import evaluators
from services.evaluator.evaluators import ContainsOptions, Score, parse_options


def contains_whole_words(case, spec):
    options = parse_options(ContainsOptions, spec)
    keywords = options.keywords or []
    if not keywords:
        return None
    text = case.output if isinstance(case.output, str) else ""
    found = sum(1 for k in keywords if re.search(rf"\b{re.escape(k)}\b", text, re.IGNORECASE))
    return Score(found / len(keywords), "numeric")


evaluators.REGISTRY["contains"] = dataclasses.replace(
    evaluators.REGISTRY["contains"], version="2", fn=contains_whole_words)

if __name__ == "__main__":
    from services.cli import app

    app(["serve", "evaluator"])
