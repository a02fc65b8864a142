"""What the HTTP APIs answer when a dependency cannot be reached (services/http.py): a 503 naming
it, with Retry-After; an event too large for the broker is the client's 413."""

from __future__ import annotations

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from fastapi import FastAPI

from services.http import install_error_handlers


async def _refused_by_asyncpg() -> None:
    import asyncpg

    # A real refused connection, raised from inside asyncpg: only the traceback says whose.
    await asyncpg.connect("postgresql://postgres@127.0.0.1:9/x", timeout=5)


async def _get(error) -> httpx.Response:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/")
    async def fail() -> None:
        if callable(error):
            await error()
        raise error

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/")


@pytest.mark.parametrize(("error", "status", "starts"), [
    (KafkaTimeoutError("no ack"), 503, "the broker is unreachable (KafkaTimeoutError"),
    (_refused_by_asyncpg, 503, "Postgres is unreachable (ConnectionRefusedError"),
    (ConnectionRefusedError("refused"), 503, "a service evalstream depends on is unreachable"),
    (MessageSizeTooLargeError("too big"), 413, "an event is larger than the broker takes"),
])
async def test_a_dependency_that_cannot_be_reached_is_named(error, status, starts) -> None:
    r = await _get(error)
    assert r.status_code == status, r.text
    [detail] = r.json()["detail"]
    assert detail["msg"].startswith(starts), detail
    if status == 503:
        assert r.headers["retry-after"] == "5" and detail["type"] == "unavailable"


async def test_other_errors_stay_500() -> None:
    assert (await _get(ValueError("a bug"))).status_code == 500
