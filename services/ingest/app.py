"""Ingest: the HTTP command API and the outbox relay, wired together (`application_factory`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from services import metrics
from services.database import create_pool
from services.evaluator import plugins
from services.http import BodySizeLimit, install_error_handlers, require_api_key
from services.ingest.api import router
from services.ingest.catalog import Catalog
from services.ingest.outbox import run_relay
from services.messaging import EventPublisher, ensure_topics
from services.settings import Settings


def application_factory(settings: Settings) -> FastAPI:
    plugins.load(settings.evaluator_plugins)  # their specs are accepted and checked here

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings)
        pool = await create_pool(settings.dsn, settings.catalog_schema)
        publisher = EventPublisher(settings, "ingest")
        await publisher.start()
        app.state.catalog = Catalog(pool, settings)
        app.state.publisher = publisher
        relay = asyncio.create_task(run_relay(pool, publisher), name="outbox-relay")
        try:
            yield
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            await publisher.stop()
            await pool.close()

    app = FastAPI(title="evalstream ingest", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    metrics.instrument(app)
    app.include_router(router, dependencies=[Depends(require_api_key)])

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    return app
