"""The LLM-as-judge evaluator (`{"type": "llm_judge", "criteria": "…"}`, score source
`llm_judge`): a model is asked whether a case's output meets the spec's criteria.

Unlike the programmatic evaluators it calls out over HTTP, so it is not a synchronous `fn`:
`LLMJudge.judge_many` scores many (case, spec) pairs at once against any OpenAI-compatible
`POST {base_url}/chat/completions`, concurrently up to a bound, retrying 429s, 5xx and network
errors, and never raising for one bad call (its exception takes that pair's place, for the service
to report as a failure in the case's CaseScored). A score names the model that gave it, as the
endpoint answered (its version is "1+<model>"), so a change of model shows in the scores. Prompt
building and reply parsing are pure functions.

Configuration: `EVALSTREAM_LLM_JUDGE__*` (services/settings.py: LLMJudgeSettings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from string import Template
from typing import Any, Literal

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services import metrics
from services.evaluator.deadline import within_deadline
from services.evaluator.evaluators import PROMPT_FIELDS, LLMJudgeOptions, Score, parse_options
from services.settings import LLMJudgeSettings, Settings

__all__ = [
    "COMMENT_MAX_CHARS",
    "JudgeHTTPError",
    "LLMJudge",
    "LLMJudgeOptions",
    "NOT_CONFIGURED",
    "build_messages",
    "parse_verdict",
]

log = logging.getLogger(__name__)

COMMENT_MAX_CHARS = 1000
NOT_CONFIGURED = "llm_judge is not configured: set EVALSTREAM_LLM_JUDGE__BASE_URL"

Scale = Literal["boolean", "numeric"]

_SCORE_FORMAT: dict[str, str] = {
    "boolean": "true if the output meets the criteria, false if it does not",
    "numeric": "a number from 0 to 1: how well the output meets the criteria (1 = fully)",
}
_REPLY_SHAPE: dict[str, str] = {
    "boolean": '{"score": true or false, "reason": "<one sentence>"}',
    "numeric": '{"score": <a number from 0 to 1>, "reason": "<one sentence>"}',
}


def _system_prompt(scale: Scale) -> str:
    return (
        "You are an impartial judge of the output of an AI application. You are given, as JSON, "
        "the criteria to judge by, the input the application was given, its output and, when "
        "there is one, the expected output. Judge the output against the criteria only.\n"
        f"Reply with JSON only, no other text: {_REPLY_SHAPE[scale]}\n"
        f"score: {_SCORE_FORMAT[scale]}. reason: one sentence saying why."
    )


_SYSTEM_PROMPTS: dict[str, str] = {scale: _system_prompt(scale) for scale in _SCORE_FORMAT}


def _has_expected(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def build_messages(case: ScoringCase, options: LLMJudgeOptions) -> list[dict[str, str]]:
    """The chat messages asking the judge about one case: a system prompt fixing the reply shape
    for the scale, and a user message holding criteria, input, output and (when `use_expected`
    and the case has one) the expected output as one JSON object. A pure function of its
    arguments: equal cases and options give equal messages (which is how calls are deduplicated).
    """
    question: dict[str, Any] = {
        "criteria": options.criteria,
        "input": case.input,
        "output": case.output,
    }
    if options.use_expected and _has_expected(case.expected_output):
        question["expected_output"] = case.expected_output
    if options.prompt is None:
        content = json.dumps(question, ensure_ascii=False, default=str)
    else:  # the spec's own wording; a field left out above reads as null
        content = Template(options.prompt).substitute({
            name: json.dumps(question.get(name), ensure_ascii=False, default=str)
            for name in PROMPT_FIELDS})
    return [
        {"role": "system", "content": _SYSTEM_PROMPTS[options.scale]},
        {"role": "user", "content": content},
    ]


_FENCED = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.DOTALL)


def _snippet(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_verdict(text: str, scale: Scale) -> Score:
    """The judge's reply `{"score": …, "reason": "…"}` (possibly in ``` or ```json fences) as a
    Score: boolean → 1.0/0.0 (`true`/`false`; also "true"/"false" strings and 0/1), numeric → the
    number, which must lie in 0..1. The reason becomes the comment, cut to 1000 characters.
    Raises ValueError saying what is wrong with anything else."""
    if not isinstance(text, str):
        raise ValueError(f"judge reply is not text but {type(text).__name__}")
    body = text.strip()
    if fenced := _FENCED.match(body):
        body = fenced.group(1).strip()
    if not body:
        raise ValueError("judge reply is empty")
    try:
        verdict = json.loads(body)
    except ValueError:
        raise ValueError(f"judge reply is not JSON: {_snippet(text)}") from None
    if not isinstance(verdict, dict):
        raise ValueError(f"judge reply is not a JSON object: {_snippet(text)}")
    if "score" not in verdict:
        raise ValueError(f"judge reply has no \"score\": {_snippet(text)}")
    raw = verdict["score"]

    if scale == "boolean":
        if isinstance(raw, bool):
            passed = raw
        elif isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            passed = raw.strip().lower() == "true"
        elif isinstance(raw, int | float) and raw in (0, 1):
            passed = raw == 1
        else:
            raise ValueError(f"judge score {raw!r} is not a boolean (true or false)")
        value, data_type = (1.0 if passed else 0.0), "boolean"
    elif scale == "numeric":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"judge score {raw!r} is not a number")
        value = float(raw)
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"judge score {raw!r} is out of range 0..1")
        data_type = "numeric"
    else:
        raise ValueError(f"unknown scale {scale!r} (boolean or numeric)")

    reason = verdict.get("reason")
    if reason is not None and not isinstance(reason, str):
        reason = json.dumps(reason, ensure_ascii=False, default=str)
    if reason is not None:
        reason = reason.strip()[:COMMENT_MAX_CHARS] or None
    return Score(value, data_type, comment=reason)


class JudgeHTTPError(RuntimeError):
    """The judge endpoint answered with an error status (`status_code`; `retry_after`: its
    Retry-After in seconds, if any), or with a body that is not a chat completion, or could not
    be reached."""

    def __init__(self, message: str, status_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is ignored)."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _retryable(e: BaseException) -> bool:
    if isinstance(e, JudgeHTTPError):
        return e.status_code is not None and (e.status_code == 429 or e.status_code >= 500)
    return isinstance(e, httpx.TransportError)  # connect/read errors and timeouts


Tokens = tuple[int | None, int | None]  # input, output: None where the reply says nothing


def _completion(response: httpx.Response) -> tuple[str, str | None, Tokens]:
    """The reply's text, the model the endpoint says answered (it may name a dated snapshot of
    the model asked for) and the tokens it says it used (OpenAI's `usage`: prompt_tokens,
    completion_tokens), from one parse of the body."""
    try:
        data = response.json()
        message = data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeHTTPError(
            "judge endpoint answered with no choices[0].message: "
            f"{_snippet(response.text)}", response.status_code) from None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        raise ValueError("judge reply has no content"
                         + (f" (refusal: {_snippet(str(refusal))})" if refusal else ""))
    model = data.get("model") if isinstance(data, dict) else None
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int | None:
        tokens = usage.get(key)
        return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) \
            and tokens >= 0 else None
    return (content, model.strip()[:200] if isinstance(model, str) and model.strip() else None,
            (count("prompt_tokens"), count("completion_tokens")))


def _count_answered(model: str, tokens: Tokens) -> None:
    """An answered call of `model` and its tokens, in the judge's Prometheus counters."""
    metrics.JUDGE_CALLS.labels(model, "answered").inc()
    for kind, n in zip(("input", "output"), tokens, strict=True):
        if n is not None:
            metrics.JUDGE_TOKENS.labels(model, kind).inc(n)


CONNECTIONS_PER_CLIENT = 8


class LLMJudge:
    """Scores llm_judge specs over HTTP. One instance per process: it holds the connection pool
    and the bound on calls in flight (`concurrency`), shared by every judge_many call. Close it
    with `aclose()` (or use it as an async context manager)."""

    def __init__(self, settings: LLMJudgeSettings | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings if settings is not None else Settings().llm_judge
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        # Calls in flight are spread over several clients of a few connections each: httpcore's
        # pool examines every one of its connections (a syscall or two each) whenever a request
        # starts or ends, so one pool of 128 connections spent 17.6 ms of CPU per call and
        # judged 54 cases/s where the bound was 640 (bench/judge.py). The least busy client
        # takes each call; with at most `concurrency` in flight, none ever waits for a
        # connection. A transport given (tests) is one pool already: one client then.
        self._clients: list[httpx.AsyncClient] = []
        if self.settings.base_url:
            headers = {"Accept": "application/json"}
            if self.settings.api_key:
                headers["Authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
            calls = self.settings.concurrency
            count = 1 if transport is not None else -(-calls // CONNECTIONS_PER_CLIENT)
            connections = -(-calls // count)
            self._clients = [httpx.AsyncClient(
                base_url=self.settings.base_url, headers=headers, transport=transport,
                timeout=httpx.Timeout(self.settings.timeout_s),
                limits=httpx.Limits(max_connections=connections,
                                    max_keepalive_connections=connections))
                for _ in range(count)]
        self._in_flight = [0] * len(self._clients)

    @property
    def configured(self) -> bool:
        return bool(self._clients)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def __aenter__(self) -> LLMJudge:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def judge_many(
        self, pairs: Sequence[tuple[ScoringCase, EvaluatorSpec]]
    ) -> list[Score | BaseException]:
        """One result per pair, in order: its Score, or the exception that stopped it (a wrong
        spec, the endpoint failing after its retries, an unparseable reply). Identical
        (model, messages) within the call are asked once and share the result. Never raises for
        one pair's failure."""
        if not self._clients:
            return [RuntimeError(NOT_CONFIGURED) for _ in pairs]
        results: list[Score | BaseException | None] = [None] * len(pairs)
        calls: dict[str, tuple[str, list[dict[str, str]], Scale]] = {}
        waiting: dict[str, list[int]] = {}
        for i, (case, spec) in enumerate(pairs):
            try:
                options = parse_options(LLMJudgeOptions, spec)
                model = options.model or self.settings.model
                messages = build_messages(case, options)
            except Exception as e:
                results[i] = e
                continue
            # The scale is in the system prompt, so equal messages mean an equal scale.
            key = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
            calls.setdefault(key, (model, messages, options.scale))
            waiting.setdefault(key, []).append(i)
        keys = list(calls)
        answers = await self._within_deadline([self._judge(*calls[key]) for key in keys])
        for key, answer in zip(keys, answers, strict=True):
            for n, i in enumerate(waiting[key]):
                # One call's tokens are counted once: on the first case that shares its answer.
                results[i] = answer if n == 0 or not isinstance(answer, Score) else replace(
                    answer, input_tokens=None, output_tokens=None)
        return results  # type: ignore[return-value]  # every slot is filled by now

    async def _within_deadline(self, calls: list) -> list[Score | BaseException]:
        """Every call's result or exception; a call still running at the batch deadline is
        cancelled and answered with a TimeoutError saying so."""
        deadline = self.settings.batch_deadline_s
        return await within_deadline(calls, deadline, lambda: TimeoutError(
            f"the judge did not answer within the batch deadline of {deadline:g} s "
            "(EVALSTREAM_LLM_JUDGE__BATCH_DEADLINE_S); rescore to ask again"))

    async def _judge(self, model: str, messages: list[dict[str, str]], scale: Scale) -> Score:
        text, answered_by, usage = await self._complete(model, messages)
        return replace(parse_verdict(text, scale), model=answered_by or model,
                       input_tokens=usage[0], output_tokens=usage[1])

    async def _complete(self, model: str, messages: list[dict[str, str]]
                        ) -> tuple[str, str | None, Tokens]:
        """The completion's text, the model that answered and the tokens it used (input,
        output), retrying 429, 5xx and network errors with exponential backoff (a 429's
        Retry-After is honoured up to backoff_max_s)."""
        assert self._clients
        body = {"model": model, "messages": messages, "temperature": 0,
                "response_format": {"type": "json_object"}}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait, retry=retry_if_exception(_retryable), reraise=True,
            before_sleep=before_sleep_log(log, logging.WARNING))
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._semaphore:  # not held while backing off
                        response = await self._post(body)
                    if response.status_code >= 400:
                        raise JudgeHTTPError(
                            f"judge endpoint answered {response.status_code} "
                            f"{response.reason_phrase}: {_snippet(response.text)}",
                            response.status_code, _retry_after(response))
                    text, answered_by, tokens = _completion(response)
                    _count_answered(model, tokens)
                    return text, answered_by, tokens
        except (JudgeHTTPError, httpx.TransportError) as e:
            metrics.JUDGE_CALLS.labels(model, "failed").inc()
            attempts = retrying.statistics.get("attempt_number", 1)
            detail = str(e) or type(e).__name__
            if isinstance(e, httpx.TransportError):
                detail = f"{type(e).__name__} calling the judge endpoint: {detail}"
            raise JudgeHTTPError(f"{detail} (after {attempts} attempt"
                                 f"{'s' if attempts != 1 else ''})",
                                 getattr(e, "status_code", None)) from e
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _post(self, body: dict) -> httpx.Response:
        """POST chat/completions with the client that has the fewest calls in flight."""
        n = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[n] += 1
        try:
            return await self._clients[n].post("chat/completions", json=body)
        finally:
            self._in_flight[n] -= 1

    def _wait(self, state: RetryCallState) -> float:
        ceiling = self.settings.backoff_max_s
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, JudgeHTTPError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), ceiling)
        return wait_exponential(multiplier=self.settings.backoff_s, max=ceiling)(state)
