"""What both HTTP APIs share: bearer-key auth, request size limits and error bodies that name the
field at fault (FastAPI's own `{"detail": [{"loc", "msg", "type"}]}` shape throughout), and a 503
naming Postgres or the broker when one of them cannot be reached."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

import asyncpg
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send


class FieldError(Exception):
    """A request that is well-formed JSON but wrong against the catalog (unknown run, say)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, status: int = 422,
                 type: str = "value_error"):
        super().__init__(msg)
        self.loc, self.msg, self.status, self.type = loc, msg, status, type

    def detail(self) -> list[dict[str, Any]]:
        in_body = bool(self.loc) and self.loc[0] != "path"
        return [{"loc": ["body", *self.loc] if in_body else list(self.loc),
                 "msg": self.msg, "type": self.type}]


log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if credentials is None:
        raise HTTPException(401, "missing `Authorization: Bearer <key>`",
                            headers={"WWW-Authenticate": "Bearer"})
    if not any(hmac.compare_digest(credentials.credentials, k) for k in keys):
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})


class BodySizeLimit:
    """Refuse bodies over the limit with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.max_bytes)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": [{
        "loc": ["body"], "msg": f"request body exceeds {limit} bytes", "type": "too_large"}]})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FieldError)
    async def _field_error(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail()})

    @app.exception_handler(OSError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(asyncpg.TooManyConnectionsError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(KafkaError)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, MessageSizeTooLargeError):
            return JSONResponse(status_code=413, content={"detail": [{
                "loc": ["body"], "msg": f"an event is larger than the broker takes: {exc}",
                "type": "too_large"}]})
        dependency = dependency_of(exc)
        log.warning("%s %s: 503, %s is unreachable: %s: %s", request.method, request.url.path,
                    dependency, type(exc).__name__, exc)
        return unavailable(dependency, exc)


# Seconds a client is asked to wait before trying again while a dependency is unreachable.
RETRY_AFTER_S = 5


def dependency_of(exc: BaseException) -> str:
    """Which dependency an error came from: by its type, else by the modules its traceback
    passed through (a refused connection is an OSError whoever made it)."""
    if isinstance(exc, KafkaError):
        return "the broker"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return "Postgres"
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("asyncpg"):
            return "Postgres"
        if module.startswith("aiokafka"):
            return "the broker"
        tb = tb.tb_next
    return "a service evalstream depends on"


def unavailable(dependency: str, exc: BaseException) -> JSONResponse:
    """503: the request was not completed because `dependency` could not be reached. Sending it
    again is safe: nothing was stored, and traces published before the failure have the same
    ids when sent again, which consumers skip."""
    detail = str(exc) or type(exc).__name__
    return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}, content={
        "detail": [{"loc": [], "msg": f"{dependency} is unreachable ({type(exc).__name__}: "
                                      f"{detail}); the request was not completed, send it again",
                    "type": "unavailable"}]})
