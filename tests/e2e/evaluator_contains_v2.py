"""An evaluator plugin in which `contains` is version 2 (whole words only): what a team ships after
changing an evaluator's semantics. The replay test runs an evaluator with it in place of the
stack's (`EVALSTREAM_EVALUATOR_PLUGINS=tests/e2e/evaluator_contains_v2.py evalstream serve
evaluator`)."""

from __future__ import annotations

import re

from services.evaluator.evaluators import ContainsOptions
from services.evaluator.plugins import evaluator


@evaluator("contains", version="2", options=ContainsOptions)
def contains_whole_words(case, options: ContainsOptions):
    keywords = options.keywords or []
    if not keywords:
        return None
    text = case.output if isinstance(case.output, str) else ""
    found = sum(1 for k in keywords if re.search(rf"\b{re.escape(k)}\b", text, re.IGNORECASE))
    return found / len(keywords)
