"""A fake LLM judge for tests: a real HTTP server on a local port (FastAPI under uvicorn, in a
thread) that speaks OpenAI's chat-completions shape and decides each verdict from the request it
is sent. The LLM provider is the one part of the flow a test here cannot reach for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class FakeJudge:
    """A chat-completions endpoint. Verdict: boolean → true when the output contains the
    expected output (ignoring case); numeric → the share of the expected output's words found in
    the output. Models: `slow` answers after 50 ms, `flaky` answers 500 twice per distinct
    request then 200, `limited` answers 429 (Retry-After: 0) once per request then 200, `broken`
    always 500, `garbage` replies prose, `fenced` wraps its JSON in ```json fences, `hang` answers
    after a second, `wait-<ms>` after that many milliseconds (the model latency of
    bench/judge.py); any other model answers at once."""

    url: str = ""  # set by whoever serves it

    def __init__(self) -> None:
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)
        self.reset()

    def reset(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.seen: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def count(self, model: str) -> int:
        return sum(1 for r in self.requests if r["model"] == model)

    async def complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        key = json.dumps(body, sort_keys=True)
        self.seen[key] += 1
        model = body["model"]
        # Only `slow` requests are counted in flight: a `hang` one of an earlier test may still
        # be running (its client gave up) and would skew the count after a reset.
        if model == "slow":
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if model == "slow":
                await asyncio.sleep(0.05)
            if model == "hang":
                await asyncio.sleep(1.0)
            if model.startswith("wait-"):
                await asyncio.sleep(int(model[5:]) / 1000)
            if model == "broken" or (model == "flaky" and self.seen[key] <= 2):
                return JSONResponse({"error": {"message": "judge overloaded"}}, status_code=500)
            if model == "limited" and self.seen[key] == 1:
                return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                    headers={"Retry-After": "0"})
            content = self.verdict(body["messages"])
            if model == "garbage":
                content = "Looks good to me!"
            elif model == "fenced":
                content = f"```json\n{content}\n```"
            return JSONResponse({
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
                "created": int(time.time()), "model": self.answering(model),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}})
        finally:
            if model == "slow":
                self.in_flight -= 1

    @staticmethod
    def answering(model: str) -> str:
        """The model named in a reply: a dated snapshot of the one asked for, as OpenAI names
        the model behind an alias."""
        return f"{model}-2026-11-01"

    @staticmethod
    def verdict(messages: list[dict[str, str]]) -> str:
        system, user = messages[0]["content"], json.loads(messages[1]["content"])
        output = str(user["output"]).casefold()
        expected = user.get("expected_output")
        if expected is None:
            return json.dumps({"score": False, "reason": "No expected output to compare with."})
        expected = str(expected).casefold()
        if "a number from 0 to 1" in system:
            words = expected.split()
            share = sum(w in output for w in words) / len(words)
            return json.dumps({"score": share, "reason": f"{share:.2f} of the expected words."})
        if expected in output:
            return json.dumps({"score": True, "reason": f"The output contains {expected!r}."})
        return json.dumps({"score": False, "reason": f"The output lacks {expected!r}."})


@contextlib.contextmanager
def serving(fake: FakeJudge) -> Iterator[str]:
    """Run `fake` on a free local port; yields its base URL (`http://127.0.0.1:<port>/v1`)."""
    uv = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=0, log_level="warning",
                                       lifespan="off", access_log=False))
    thread = threading.Thread(target=uv.run, name="fake-judge", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("fake judge did not start")
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
